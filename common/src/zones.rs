//! Which `[[channel.zone]]` areas a piece of activity touched: a motion box or an object's box
//! (normalised coordinates) touches a zone when the two overlap at all. Exact for any simple
//! polygon, convex or not: they overlap when a corner of one lies inside the other or two of
//! their edges cross.

use crate::config::ZoneConfig;
use crate::events::NormBox;

/// The names of the zones `boxes` touch, in the zones' order.
pub fn touched(zones: &[ZoneConfig], boxes: &[NormBox]) -> Vec<String> {
    zones.iter().filter(|z| boxes.iter().any(|b| overlaps(&z.points, b))).map(|z| z.name.clone()).collect()
}

/// Whether polygon `poly` and box `b` share any point.
pub fn overlaps(poly: &[[f32; 2]], b: &NormBox) -> bool {
    if poly.len() < 3 {
        return false;
    }
    let corners = [[b.x, b.y], [b.x + b.w, b.y], [b.x + b.w, b.y + b.h], [b.x, b.y + b.h]];
    let in_box = |[x, y]: [f32; 2]| x >= b.x && x <= b.x + b.w && y >= b.y && y <= b.y + b.h;
    if poly.iter().any(|&p| in_box(p)) || corners.iter().any(|&c| inside(poly, c)) {
        return true;
    }
    let edges = |pts: &[[f32; 2]]| -> Vec<([f32; 2], [f32; 2])> {
        (0..pts.len()).map(|i| (pts[i], pts[(i + 1) % pts.len()])).collect()
    };
    let box_edges = edges(&corners);
    edges(poly).iter().any(|&(a, b)| box_edges.iter().any(|&(c, d)| segments_cross(a, b, c, d)))
}

/// Point in polygon (even-odd rule).
fn inside(poly: &[[f32; 2]], [x, y]: [f32; 2]) -> bool {
    let mut odd = false;
    let mut j = poly.len() - 1;
    for i in 0..poly.len() {
        let ([xi, yi], [xj, yj]) = (poly[i], poly[j]);
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            odd = !odd;
        }
        j = i;
    }
    odd
}

fn segments_cross(a: [f32; 2], b: [f32; 2], c: [f32; 2], d: [f32; 2]) -> bool {
    let orient = |p: [f32; 2], q: [f32; 2], r: [f32; 2]| (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0]);
    let (d1, d2) = (orient(c, d, a), orient(c, d, b));
    let (d3, d4) = (orient(a, b, c), orient(a, b, d));
    (d1 * d2 < 0.0) && (d3 * d4 < 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(name: &str, points: &[[f32; 2]]) -> ZoneConfig {
        ZoneConfig { name: name.into(), points: points.to_vec() }
    }

    fn bx(x: f32, y: f32, w: f32, h: f32) -> NormBox {
        NormBox { x, y, w, h }
    }

    #[test]
    fn a_box_touches_the_zones_it_overlaps_however_they_meet() {
        // Left half, a thin diagonal band crossing the picture, an L-shaped (concave) zone.
        let left = zone("left", &[[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]);
        let band = zone("band", &[[0.0, 0.9], [0.9, 0.0], [1.0, 0.0], [1.0, 0.1], [0.1, 1.0], [0.0, 1.0]]);
        let ell = zone("ell", &[[0.6, 0.6], [1.0, 0.6], [1.0, 0.7], [0.7, 0.7], [0.7, 1.0], [0.6, 1.0]]);
        let zones = [left.clone(), band, ell];
        // Inside the left half only.
        assert_eq!(touched(&zones, &[bx(0.05, 0.05, 0.1, 0.1)]), ["left"]);
        // A big box over the bottom-right: the band and the L, not the left half.
        assert_eq!(touched(&zones, &[bx(0.52, 0.52, 0.45, 0.45)]), ["band", "ell"]);
        // The notch of the L (inside its bounding box, outside the L): nothing.
        assert!(touched(&zones, &[bx(0.8, 0.8, 0.15, 0.15)]).is_empty());
        // A box crossing the band with no corner of either inside the other.
        assert!(overlaps(&zones[1].points, &bx(0.25, 0.25, 0.35, 0.35)));
        // A wide flat box across a thin upright strip: only their edges meet.
        let strip = [[0.45, 0.0], [0.55, 0.0], [0.55, 1.0], [0.45, 1.0]];
        assert!(overlaps(&strip, &bx(0.3, 0.5, 0.4, 0.01)));
        assert!(overlaps(&left.points, &bx(0.4, 0.5, 0.3, 0.01)));
        // Right next to it, not touching.
        assert!(!overlaps(&left.points, &bx(0.51, 0.2, 0.1, 0.1)));
        // Several boxes: any one touching is enough; order follows the zones.
        assert_eq!(touched(&zones, &[bx(0.88, 0.03, 0.01, 0.01), bx(0.1, 0.1, 0.01, 0.01)]), ["left", "band"]);
        assert!(touched(&zones, &[]).is_empty());
    }
}
