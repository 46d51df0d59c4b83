//! A lease in Redis: a key that names its owner and expires by itself, so a process that dies
//! holding it gives it up after its TTL. Batches (worker-motion), recordings (worker-record), the
//! scheduler's leadership and a volume's rotation are leases; each is taken, renewed and released
//! only here, by the scripts in `lua/` (written once, loaded with `include_str!`).

use redis::aio::ConnectionLike;

const ACQUIRE: &str = include_str!("lua/lease_acquire.lua");
const RENEW: &str = include_str!("lua/lease_renew.lua");
const RELEASE: &str = include_str!("lua/lease_release.lua");

/// One owner's claim on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    key: String,
    owner: String,
    ttl_ms: u64,
}

impl Lease {
    /// `key` from [`crate::keys::Keys`]; `owner` a cluster-unique name ([`crate::worker_name`]).
    pub fn new(key: String, owner: &str, ttl_ms: u64) -> Self {
        Self { key, owner: owner.to_owned(), ttl_ms }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Takes the lease if it is free or already ours (its TTL then starts again). `true`: held.
    pub async fn acquire<C: ConnectionLike + Send>(&self, conn: &mut C) -> redis::RedisResult<bool> {
        let got: i32 =
            redis::Script::new(ACQUIRE).key(&self.key).arg(&self.owner).arg(self.ttl_ms).invoke_async(conn).await?;
        Ok(got == 1)
    }

    /// Takes the lease only if nobody holds it, ourselves included (`SET NX`): a second call by
    /// the same owner while it holds the lease answers `false`.
    pub async fn take_if_free<C: ConnectionLike + Send>(&self, conn: &mut C) -> redis::RedisResult<bool> {
        let set: Option<String> = redis::cmd("SET")
            .arg(&self.key)
            .arg(&self.owner)
            .arg("NX")
            .arg("PX")
            .arg(self.ttl_ms)
            .query_async(conn)
            .await?;
        Ok(set.is_some())
    }

    /// Extends the lease while it is ours. `false`: it expired or another owner holds it now.
    pub async fn renew<C: ConnectionLike + Send>(&self, conn: &mut C) -> redis::RedisResult<bool> {
        let ok: i32 =
            redis::Script::new(RENEW).key(&self.key).arg(&self.owner).arg(self.ttl_ms).invoke_async(conn).await?;
        Ok(ok == 1)
    }

    /// Gives the lease up if it is still ours (never a successor's), so the next owner need not
    /// wait for the TTL. `true` if it was ours.
    pub async fn release<C: ConnectionLike + Send>(&self, conn: &mut C) -> redis::RedisResult<bool> {
        let n: i32 = redis::Script::new(RELEASE).key(&self.key).arg(&self.owner).invoke_async(conn).await?;
        Ok(n == 1)
    }
}
