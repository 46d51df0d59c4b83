//! Names of files the cluster writes and serves: shared by the writers (worker-record,
//! worker-yolo) and the API, which must accept nothing else (no path tricks); and the set of
//! protected backup names, which rotation and retention skip.

/// A finished backup's name: `Channel<digits>_<anything>.mkv|mp4`, no path separator, not
/// hidden (temporary files start with `.`).
pub fn is_backup_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("Channel") else { return false };
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    digits > 0
        && rest[digits..].starts_with('_')
        && (name.ends_with(".mkv") || name.ends_with(".mp4"))
        && !name.contains('/')
        && !name.contains("..")
}

/// The channel a backup's name belongs to (`Channel<id>_...`), `None` for other names.
pub fn backup_channel(name: &str) -> Option<u32> {
    name.strip_prefix("Channel")?.split('_').next()?.parse().ok()
}

/// Protects (or releases) a backup from rotation and retention: its name in
/// `<ns>:backups:protected`. Returns whether anything changed.
pub async fn set_protected(
    conn: &mut redis::aio::ConnectionManager,
    keys: &crate::keys::Keys,
    name: &str,
    protect: bool,
) -> redis::RedisResult<bool> {
    use redis::AsyncCommands;
    let changed: i64 = if protect {
        conn.sadd(keys.backups_protected(), name).await?
    } else {
        conn.srem(keys.backups_protected(), name).await?
    };
    Ok(changed > 0)
}

/// The names of the protected backups.
pub async fn protected_backups(
    conn: &mut redis::aio::ConnectionManager,
    keys: &crate::keys::Keys,
) -> redis::RedisResult<std::collections::HashSet<String>> {
    use redis::AsyncCommands;
    conn.smembers(keys.backups_protected()).await
}

/// A snapshot's name: `ch<id>_<digits>.jpg`.
pub fn is_snapshot_name(name: &str) -> bool {
    name.strip_prefix("ch").and_then(|r| r.strip_suffix(".jpg")).and_then(|r| r.split_once('_')).is_some_and(
        |(a, b)| {
            !a.is_empty()
                && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        },
    )
}

/// Where the browser-playable H.264 copy of backup `name` is kept, made on demand for a browser
/// that cannot play the H.265 original: `<backup_dir>/.h264/<stem>.mp4`. It belongs to the
/// backup: deleted with it, and counted in the storage report.
pub fn h264_copy_path(backup_dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let stem = name.rsplit_once('.').map_or(name, |(stem, _)| stem);
    backup_dir.join(H264_COPY_DIR).join(format!("{stem}.mp4"))
}

/// The folder of [`h264_copy_path`] inside a backup directory.
pub const H264_COPY_DIR: &str = ".h264";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_names_its_channel() {
        assert_eq!(backup_channel("Channel12_2026-01-01_10-00-00.mkv"), Some(12));
        assert_eq!(backup_channel("Channel_x.mkv"), None);
        assert_eq!(backup_channel("notes.mkv"), None);
    }

    #[test]
    fn only_plain_names_qualify() {
        assert!(is_backup_name("Channel12_2026-01-01_10-00-00.mkv"));
        assert!(is_backup_name("Channel1_2026-01-01_10-00-00_2.mp4"));
        for bad in [
            "Channel_x.mkv",
            ".Channel1_x.mkv.r.part",
            "Channel1_x.ts",
            "notes.mkv",
            "Channelx_1.mkv",
            "Channel1_/../x.mkv",
        ] {
            assert!(!is_backup_name(bad), "{bad}");
        }
        assert!(is_snapshot_name("ch3_0001764000000123.jpg"));
        for bad in ["ch3_x.jpg", "../ch3_1.jpg", "ch_1.jpg", "ch3_1.png"] {
            assert!(!is_snapshot_name(bad), "{bad}");
        }
    }
}
