//! `lambda generate`: realistic synthetic e-commerce events, so the demo runs without the external data set.
//!
//! The mixes below are those of the real Kaggle "eCommerce behavior data from multi category store"
//! November sample: event types 93.6% view / 4.8% cart / 1.5% purchase, brand and category popularity
//! with their share of empty values, and median prices per category.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use chrono::{DateTime, Duration, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

const EVENT_TYPES: &[(&str, u32)] = &[("view", 9397), ("cart", 486), ("purchase", 151)];

const BRANDS: &[(&str, u32)] = &[
    ("", 1347),
    ("samsung", 1213),
    ("apple", 945),
    ("xiaomi", 705),
    ("huawei", 207),
    ("lucente", 203),
    ("lg", 156),
    ("bosch", 151),
    ("sony", 136),
    ("respect", 128),
    ("oppo", 119),
    ("cordiant", 116),
    ("artel", 108),
    ("lenovo", 102),
    ("acer", 100),
    ("hp", 89),
    ("asus", 75),
    ("redmond", 70),
    ("philips", 69),
    ("dauscher", 63),
    ("indesit", 63),
    ("polaris", 57),
    ("tefal", 55),
    ("casio", 55),
    ("vitek", 53),
];

/// (category_code, weight, median price)
const CATEGORIES: &[(&str, u32, f64)] = &[
    ("", 3258, 89.81),
    ("electronics.smartphone", 2459, 282.84),
    ("electronics.video.tv", 335, 381.73),
    ("computers.notebook", 314, 545.45),
    ("electronics.clocks", 305, 195.11),
    ("apparel.shoes", 297, 82.63),
    ("electronics.audio.headphone", 284, 118.03),
    ("appliances.environment.vacuum", 234, 119.20),
    ("appliances.kitchen.washer", 226, 290.0),
    ("appliances.kitchen.refrigerators", 183, 450.0),
    ("computers.desktop", 121, 600.0),
    ("furniture.living_room.cabinet", 89, 150.0),
    ("electronics.tablet", 59, 250.0),
];

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T], weight: impl Fn(&T) -> u32) -> &'a T {
    let total: u32 = items.iter().map(&weight).sum();
    let mut x = rng.random_range(0..total);
    for item in items {
        let w = weight(item);
        if x < w {
            return item;
        }
        x -= w;
    }
    items.last().expect("non-empty table")
}

/// `n` events spread evenly from `start` over `span`, each up to 30 s out of order; deterministic per `seed`.
pub fn events(n: usize, seed: u64, start: DateTime<Utc>, span: Duration) -> Vec<Map<String, Value>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let step_ms = span.num_milliseconds() as f64 / n.max(1) as f64;
    let users: Vec<(i64, String)> = (0..(n / 8).max(10))
        .map(|_| {
            let uid = rng.random_range(510_000_000..580_000_000i64);
            let session = format!(
                "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
                rng.random::<u32>(),
                rng.random::<u16>(),
                rng.random_range(0..0xfff),
                rng.random::<u16>(),
                rng.random_range(0..(1u64 << 48))
            );
            (uid, session)
        })
        .collect();
    (0..n)
        .map(|i| {
            let jitter = rng.random_range(-30_000..=30_000);
            let t = start + Duration::milliseconds((i as f64 * step_ms) as i64 + jitter);
            let t = t.max(start);
            let (event_type, _) = pick(&mut rng, EVENT_TYPES, |e| e.1);
            let (brand, _) = pick(&mut rng, BRANDS, |b| b.1);
            let &(category, _, median) = pick(&mut rng, CATEGORIES, |c| c.1);
            // log-normal spread around the category median
            let factor = (rng.random::<f64>() * 2.0 - 1.0) * 0.9;
            let price = ((median * factor.exp()) * 100.0).round() / 100.0;
            let (user_id, session) = &users[rng.random_range(0..users.len())];
            let category_id = 2_053_013_552_000_000_000i64 + (category.len() as i64 * 7_919_113);
            let object = json!({
                "event_time": t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                "event_type": event_type,
                "product_id": rng.random_range(1_000_000..60_000_000i64),
                "category_id": category_id,
                "category_code": category,
                "brand": brand,
                "price": price,
                "user_id": user_id,
                "user_session": session,
            });
            match object {
                Value::Object(m) => m,
                _ => unreachable!("json! object"),
            }
        })
        .collect()
}

/// The demo's default: events over November 2019 (starting 2019-11-01T00:00:00Z), one every ~4 minutes of event time.
pub fn default_events(n: usize, seed: u64) -> Vec<Map<String, Value>> {
    let start = DateTime::parse_from_rfc3339("2019-11-01T00:00:00Z").expect("static time").with_timezone(&Utc);
    events(n, seed, start, Duration::days(30))
}

/// Writes `n` events as JSON Lines to `out`.
pub fn write_jsonl(out: &Path, n: usize, seed: u64) -> Result<()> {
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut w = std::io::BufWriter::new(file);
    for e in default_events(n, seed) {
        serde_json::to_writer(&mut w, &e)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::schema::Decoder;
    use common::Config;

    #[test]
    fn generated_events_decode_and_follow_the_mix() {
        let decoder = Decoder::new(&Config::defaults());
        let events = default_events(20_000, 7);
        let mut views = 0;
        for e in &events {
            let bytes = serde_json::to_vec(e).unwrap();
            decoder.decode(&bytes).expect("generated events are valid");
            views += usize::from(e["event_type"] == "view");
        }
        let share = views as f64 / events.len() as f64;
        assert!((0.92..0.95).contains(&share), "view share {share}");
        assert_eq!(default_events(50, 7), default_events(50, 7), "deterministic per seed");
    }
}
