//! `lambda generate`: realistic synthetic e-commerce events at any scale, for the demo and the benchmarks.
//!
//! A [`Model`] holds the value distributions of the e-commerce schema (the embedded defaults): the
//! event-type mix, category popularity with each category's brand mix and log-normal price, the product and
//! user id ranges, and the event-time intensity (day of span x hour of day). [`Model::fit`] learns them from
//! a real CSV file such as `../shared/data/ecommerce/2019-Nov-sample.csv`; [`Model::builtin`] is a small
//! model fitted once on that sample, so the demo needs no data file.
//!
//! What a uniform sample cannot show (it holds about one event in 6,700 of the month, so nearly every user
//! and session appears once) comes from [`Shape`]: the size of the product and user pools, Zipf skew of
//! product popularity and user activity, and the mean session length. The defaults follow the ratios of the
//! full November 2019 file (67 M events, about 3.7 M users and 13.8 M sessions).
//!
//! [`Generator`] draws events in order of production time: times follow the fitted intensity over the
//! fitted span, sessions interleave (a pool of concurrently open sessions), a share of events are *late*
//! (event time up to `late_max` before production) and a share are *duplicates* (an exact copy of one of
//! the last few thousand events, produced again). It writes Kafka-shaped JSON Lines ([`write_jsonl`]) or
//! the archive's Parquet layout directly ([`write_archive`]).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use batch_layer::archive::files::{file_name, partition_dir};
use batch_layer::archive::parquet_file::{self, ArchivedRecord};
use chrono::{DateTime, NaiveDateTime, Timelike, Utc};
use common::config::Config;
use common::schema::{Event, Value};
use rand::distr::weighted::WeightedIndex;
use rand::distr::Distribution;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map};

/// One category: its id and code, share of events, brand mix and log-normal price.
#[derive(Debug, Clone, PartialEq)]
pub struct CategoryModel {
    pub category_id: i64,
    /// Empty when the source has no code for this category.
    pub code: String,
    /// Number of source events in this category.
    pub weight: u64,
    /// (brand, events); the empty brand is a value like any other.
    pub brands: Vec<(String, u64)>,
    /// Mean and standard deviation of ln(price).
    pub log_price: (f64, f64),
}

/// The fitted value distributions.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub event_types: Vec<(String, u64)>,
    pub categories: Vec<CategoryModel>,
    /// First and last event time of the source, Unix seconds.
    pub span: (i64, i64),
    /// Events per day of the span (day 0 starts at the first event's midnight, UTC).
    pub day_weights: Vec<f64>,
    /// Events per hour of day, UTC.
    pub hour_weights: [f64; 24],
    pub product_ids: (i64, i64),
    pub user_ids: (i64, i64),
    /// Source rows the model was fitted on.
    pub rows: u64,
}

/// What the sample cannot tell: pool sizes, skew and session length.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    /// Distinct products; `None`: n / 30, between 1,000 and 200,000 (the full file: 67 M events, 190 k products).
    pub products: Option<usize>,
    /// Distinct users; `None`: n / 18, at least 100 (the full file: about 18 events per user).
    pub users: Option<usize>,
    /// Zipf exponent of product popularity within a category and of user activity.
    pub zipf: f64,
    /// Mean events per session (the full file: about 4.9).
    pub session_mean: f64,
    /// Sessions open at once, interleaving their events.
    pub open_sessions: usize,
}

impl Default for Shape {
    fn default() -> Self {
        Shape { products: None, users: None, zipf: 1.0, session_mean: 4.9, open_sessions: 1_000 }
    }
}

/// Options of one generation run.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    pub events: u64,
    pub seed: u64,
    /// Share (0-1) of produced events that are exact copies of an earlier event.
    pub duplicates: f64,
    /// Share (0-1) of events whose event time lies up to `late_max_s` before their production time.
    pub late: f64,
    pub late_max_s: i64,
    /// Every event has up to this much jitter between event time and production time, seconds.
    pub jitter_s: i64,
    pub shape: Shape,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            events: 10_000,
            seed: 42,
            duplicates: 0.0,
            late: 0.0,
            late_max_s: 3_600,
            jitter_s: 30,
            shape: Shape::default(),
        }
    }
}

/// One generated event. `produced_ms` is its Kafka timestamp (production time).
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub produced_ms: i64,
    /// Unix seconds (the source format has second precision).
    pub event_time: i64,
    pub event_type: &'static str,
    pub product_id: i64,
    pub category_id: i64,
    pub category_code: &'static str,
    pub brand: &'static str,
    pub price: f64,
    pub user_id: i64,
    pub user_session: String,
    /// True when this event is a copy of an earlier one.
    pub duplicate: bool,
}

const TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S UTC";

impl Model {
    /// Learns the distributions from a CSV file with the e-commerce header (`event_time, event_type,
    /// product_id, category_id, category_code, brand, price, user_id, user_session`).
    ///
    /// Errors: the file cannot be read, a column is missing, or a row has an unparsable time or number
    /// (the message gives the row number).
    pub fn fit(path: &Path) -> Result<Model> {
        let mut reader = csv::Reader::from_path(path).with_context(|| format!("opening {}", path.display()))?;
        let headers = reader.headers()?.clone();
        let col = |name: &str| {
            headers.iter().position(|h| h == name).with_context(|| format!("{}: no `{name}` column", path.display()))
        };
        let [t, ty, pid, cid, code, brand, price, uid] =
            ["event_time", "event_type", "product_id", "category_id", "category_code", "brand", "price", "user_id"]
                .map(col);
        let (t, ty, pid, cid, code, brand, price, uid) = (t?, ty?, pid?, cid?, code?, brand?, price?, uid?);

        let mut event_types: BTreeMap<String, u64> = BTreeMap::new();
        struct Acc {
            code: String,
            weight: u64,
            brands: BTreeMap<String, u64>,
            log_prices: Vec<f64>,
        }
        let mut categories: BTreeMap<i64, Acc> = BTreeMap::new();
        let mut times = Vec::new();
        let (mut products, mut users) = ((i64::MAX, i64::MIN), (i64::MAX, i64::MIN));
        for (i, row) in reader.records().enumerate() {
            let row = row.with_context(|| format!("{}: row {}", path.display(), i + 2))?;
            let bad = |what: &str| format!("{}: row {}: bad {what}", path.display(), i + 2);
            let time = NaiveDateTime::parse_from_str(&row[t], TIME_FORMAT)
                .with_context(|| bad("event_time"))?
                .and_utc()
                .timestamp();
            times.push(time);
            *event_types.entry(row[ty].to_owned()).or_default() += 1;
            let p: i64 = row[pid].parse().with_context(|| bad("product_id"))?;
            let u: i64 = row[uid].parse().with_context(|| bad("user_id"))?;
            products = (products.0.min(p), products.1.max(p));
            users = (users.0.min(u), users.1.max(u));
            let c: i64 = row[cid].parse().with_context(|| bad("category_id"))?;
            let acc = categories.entry(c).or_insert_with(|| Acc {
                code: row[code].to_owned(),
                weight: 0,
                brands: BTreeMap::new(),
                log_prices: Vec::new(),
            });
            acc.weight += 1;
            *acc.brands.entry(row[brand].to_owned()).or_default() += 1;
            let pr: f64 = row[price].parse().with_context(|| bad("price"))?;
            if pr > 0.0 {
                acc.log_prices.push(pr.ln());
            }
        }
        ensure!(!times.is_empty(), "{}: no rows to fit", path.display());

        let all: Vec<f64> = categories.values().flat_map(|a| a.log_prices.iter().copied()).collect();
        let global = mean_sd(&all).unwrap_or((3.0, 1.0));
        let categories = categories
            .into_iter()
            .map(|(category_id, a)| {
                let log_price = match mean_sd(&a.log_prices) {
                    Some((m, sd)) if a.log_prices.len() >= 3 => (m, sd),
                    Some((m, _)) => (m, global.1),
                    None => global,
                };
                CategoryModel {
                    category_id,
                    code: a.code,
                    weight: a.weight,
                    brands: a.brands.into_iter().collect(),
                    log_price,
                }
            })
            .collect();

        let first = *times.iter().min().expect("non-empty");
        let last = *times.iter().max().expect("non-empty");
        let day0 = first.div_euclid(86_400);
        let mut day_weights = vec![0.0; (last.div_euclid(86_400) - day0 + 1) as usize];
        let mut hour_weights = [0.0; 24];
        for &s in &times {
            day_weights[(s.div_euclid(86_400) - day0) as usize] += 1.0;
            hour_weights[s.rem_euclid(86_400) as usize / 3_600] += 1.0;
        }
        Ok(Model {
            event_types: event_types.into_iter().collect(),
            categories,
            span: (first, last),
            day_weights,
            hour_weights,
            product_ids: products,
            user_ids: users,
            rows: times.len() as u64,
        })
    }

    /// A model fitted on the real November 2019 sample and cut down to its most frequent values (the top
    /// 12 categories, each with its top brands; the rest of the sample's events are folded into them).
    pub fn builtin() -> Model {
        let cat = |category_id: i64, code: &str, weight: u64, brands: &[(&str, u64)], median: f64| CategoryModel {
            category_id,
            code: code.to_owned(),
            weight,
            brands: brands.iter().map(|&(b, w)| (b.to_owned(), w)).collect(),
            log_price: (f64::ln(median), 0.6),
        };
        let hour_weights = [
            71.0, 122.0, 254.0, 385.0, 438.0, 492.0, 519.0, 522.0, 514.0, 552.0, 530.0, 519.0, 553.0, 629.0, 630.0,
            676.0, 662.0, 662.0, 480.0, 365.0, 210.0, 122.0, 74.0, 53.0,
        ];
        let start = DateTime::parse_from_rfc3339("2019-11-01T00:00:00Z").expect("static").timestamp();
        Model {
            event_types: vec![("view".into(), 9397), ("cart".into(), 486), ("purchase".into(), 151)],
            categories: vec![
                cat(
                    2053013555631882655,
                    "electronics.smartphone",
                    2459,
                    &[("samsung", 900), ("apple", 800), ("xiaomi", 500), ("huawei", 150), ("oppo", 109)],
                    282.84,
                ),
                cat(
                    2053013553559896355,
                    "",
                    1600,
                    &[("", 700), ("lucente", 200), ("respect", 128), ("cordiant", 116), ("casio", 55)],
                    89.81,
                ),
                cat(
                    2053013554415534427,
                    "electronics.video.tv",
                    335,
                    &[("samsung", 150), ("lg", 100), ("artel", 85)],
                    381.73,
                ),
                cat(
                    2053013558920217191,
                    "computers.notebook",
                    314,
                    &[("acer", 100), ("hp", 89), ("lenovo", 75), ("asus", 50)],
                    545.45,
                ),
                cat(
                    2053013553341792533,
                    "electronics.clocks",
                    305,
                    &[("apple", 100), ("samsung", 80), ("casio", 70), ("xiaomi", 55)],
                    195.11,
                ),
                cat(
                    2053013561579406073,
                    "",
                    1658,
                    &[("", 647), ("dauscher", 63), ("polaris", 57), ("vitek", 53), ("redmond", 70)],
                    60.0,
                ),
                cat(2053013555070738093, "apparel.shoes", 297, &[("", 150), ("respect", 147)], 82.63),
                cat(
                    2053013554658804075,
                    "electronics.audio.headphone",
                    284,
                    &[("apple", 100), ("samsung", 84), ("sony", 100)],
                    118.03,
                ),
                cat(
                    2053013565983425517,
                    "appliances.environment.vacuum",
                    234,
                    &[("samsung", 80), ("philips", 69), ("bosch", 85)],
                    119.20,
                ),
                cat(
                    2053013563810775923,
                    "appliances.kitchen.washer",
                    226,
                    &[("indesit", 63), ("lg", 56), ("bosch", 66), ("samsung", 41)],
                    290.0,
                ),
                cat(
                    2053013566100866035,
                    "appliances.kitchen.refrigerators",
                    183,
                    &[("lg", 83), ("indesit", 50), ("artel", 23), ("samsung", 27)],
                    450.0,
                ),
                cat(2053013553970938175, "computers.desktop", 121, &[("", 50), ("lenovo", 27), ("hp", 44)], 600.0),
                cat(2053013554096767303, "furniture.living_room.cabinet", 89, &[("", 89)], 150.0),
                cat(2053013563651392361, "electronics.tablet", 59, &[("samsung", 30), ("apple", 29)], 250.0),
            ],
            span: (start, start + 30 * 86_400 - 1),
            day_weights: vec![1.0; 30],
            hour_weights,
            product_ids: (1_000_978, 100_024_597),
            user_ids: (176_475_641, 579_963_474),
            rows: 10_034,
        }
    }

    /// A short human-readable summary of the model (for `lambda generate --fit`).
    pub fn summary(&self) -> String {
        let from = DateTime::<Utc>::from_timestamp(self.span.0, 0).expect("valid");
        let to = DateTime::<Utc>::from_timestamp(self.span.1, 0).expect("valid");
        let brands: usize = self.categories.iter().map(|c| c.brands.len()).sum();
        format!(
            "fitted on {} rows: {} event types {:?}, {} categories, {} (category, brand) pairs, events from {from} to {to}",
            self.rows,
            self.event_types.len(),
            self.event_types,
            self.categories.len(),
            brands
        )
    }
}

fn mean_sd(xs: &[f64]) -> Option<(f64, f64)> {
    if xs.is_empty() {
        return None;
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    Some((mean, var.sqrt().max(1e-9)))
}

/// Zipf weights 1/r^s for ranks 1..=n.
fn zipf(n: usize, s: f64) -> WeightedIndex<f64> {
    WeightedIndex::new((1..=n.max(1)).map(|r| 1.0 / (r as f64).powf(s))).expect("positive weights")
}

struct Product {
    id: i64,
    brand: &'static str,
    price: f64,
}

struct Category {
    id: i64,
    code: &'static str,
    products: Vec<Product>,
    popularity: WeightedIndex<f64>,
}

struct Session {
    user: i64,
    id: String,
}

/// Draws events in production order; an iterator of [`Generated`], deterministic per seed.
#[allow(missing_debug_implementations)] // distributions and pools; nothing worth printing
pub struct Generator {
    rng: StdRng,
    options: GenerateOptions,
    emitted: u64,
    event_types: Vec<&'static str>,
    event_type_dist: WeightedIndex<u64>,
    categories: Vec<Category>,
    category_dist: WeightedIndex<u64>,
    users: Vec<i64>,
    user_dist: WeightedIndex<f64>,
    sessions: Vec<Session>,
    /// Cumulative intensity per hour of the span, normalised to 1 at the end.
    hour_cdf: Vec<f64>,
    span_start: i64,
    recent: Vec<Generated>,
}

const RECENT: usize = 4_096;

fn leak(s: &str) -> &'static str {
    // The model's strings live for the whole run; a few thousand short strings at most.
    Box::leak(s.to_owned().into_boxed_str())
}

fn normal(rng: &mut StdRng) -> f64 {
    // Box-Muller
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

impl Generator {
    /// Errors: a share outside 0..=1, an empty model, or a shape with no sessions.
    pub fn new(model: &Model, options: GenerateOptions) -> Result<Generator> {
        for (name, share) in [("duplicates", options.duplicates), ("late", options.late)] {
            ensure!((0.0..=1.0).contains(&share), "--{name} must be a share between 0 and 1, got {share}");
        }
        ensure!(options.shape.open_sessions > 0, "open sessions must be at least 1");
        ensure!(options.shape.session_mean >= 1.0, "the mean session length must be at least 1");
        ensure!(!model.categories.is_empty() && !model.event_types.is_empty(), "the model has no events");
        let mut rng = StdRng::seed_from_u64(options.seed);
        let n = options.events as usize;
        let total_products = options.shape.products.unwrap_or((n / 30).clamp(1_000, 200_000)).max(1);
        let category_weight: u64 = model.categories.iter().map(|c| c.weight).sum();
        let categories: Vec<Category> = model
            .categories
            .iter()
            .map(|c| {
                let brand_dist = WeightedIndex::new(c.brands.iter().map(|b| b.1)).expect("brand weights");
                let brands: Vec<&'static str> = c.brands.iter().map(|b| leak(&b.0)).collect();
                let count =
                    ((total_products as f64 * c.weight as f64 / category_weight as f64).round() as usize).max(1);
                let products = (0..count)
                    .map(|_| {
                        let (mu, sd) = c.log_price;
                        let price = ((mu + sd * normal(&mut rng)).exp() * 100.0).round() / 100.0;
                        Product {
                            id: rng.random_range(model.product_ids.0..=model.product_ids.1),
                            brand: brands[brand_dist.sample(&mut rng)],
                            price: price.max(0.01),
                        }
                    })
                    .collect();
                Category {
                    id: c.category_id,
                    code: leak(&c.code),
                    products,
                    popularity: zipf(count, options.shape.zipf),
                }
            })
            .collect();
        let user_count = options.shape.users.unwrap_or(n / 18).max(100);
        let users: Vec<i64> = (0..user_count).map(|_| rng.random_range(model.user_ids.0..=model.user_ids.1)).collect();

        // Intensity per hour of the span: day weight x hour-of-day weight.
        let day0 = model.span.0.div_euclid(86_400) * 86_400;
        let hours = ((model.span.1 - day0) / 3_600 + 1) as usize;
        let mut hour_cdf = Vec::with_capacity(hours);
        let mut acc = 0.0;
        for h in 0..hours {
            let day = model.day_weights.get(h / 24).copied().unwrap_or(0.0);
            acc += (day * model.hour_weights[h % 24]).max(0.0);
            hour_cdf.push(acc);
        }
        ensure!(acc > 0.0, "the model's time intensity is zero everywhere");
        for c in &mut hour_cdf {
            *c /= acc;
        }

        let mut generator = Generator {
            event_types: model.event_types.iter().map(|e| leak(&e.0)).collect(),
            event_type_dist: WeightedIndex::new(model.event_types.iter().map(|e| e.1)).context("event type weights")?,
            category_dist: WeightedIndex::new(model.categories.iter().map(|c| c.weight)).context("category weights")?,
            categories,
            user_dist: zipf(users.len(), options.shape.zipf),
            users,
            sessions: Vec::new(),
            hour_cdf,
            span_start: day0,
            recent: Vec::with_capacity(RECENT),
            emitted: 0,
            rng,
            options,
        };
        generator.sessions = (0..generator.options.shape.open_sessions).map(|_| generator.new_session()).collect();
        Ok(generator)
    }

    fn new_session(&mut self) -> Session {
        let user = self.users[self.user_dist.sample(&mut self.rng)];
        let r = &mut self.rng;
        let id = format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            r.random::<u32>(),
            r.random::<u16>(),
            r.random_range(0..0xfff),
            r.random::<u16>(),
            r.random_range(0..(1u64 << 48))
        );
        Session { user, id }
    }

    /// Production time of the i-th event: the inverse of the cumulative intensity at (i + 0.5) / n.
    fn production_ms(&self, i: u64) -> i64 {
        let q = (i as f64 + 0.5) / self.options.events.max(1) as f64;
        let h = self.hour_cdf.partition_point(|&c| c < q).min(self.hour_cdf.len() - 1);
        let below = if h == 0 { 0.0 } else { self.hour_cdf[h - 1] };
        let within = if self.hour_cdf[h] > below { (q - below) / (self.hour_cdf[h] - below) } else { 0.0 };
        self.span_start * 1_000 + ((h as f64 + within.clamp(0.0, 1.0)) * 3_600_000.0) as i64
    }

    fn fresh(&mut self, produced_ms: i64) -> Generated {
        let event_type = self.event_types[self.event_type_dist.sample(&mut self.rng)];
        let ci = self.category_dist.sample(&mut self.rng);
        let pi = self.categories[ci].popularity.sample(&mut self.rng);
        let (category_id, category_code) = (self.categories[ci].id, self.categories[ci].code);
        let product = &self.categories[ci].products[pi];
        let (product_id, brand, price) = (product.id, product.brand, product.price);
        let s = self.rng.random_range(0..self.sessions.len());
        let (user_id, user_session) = (self.sessions[s].user, self.sessions[s].id.clone());
        if self.rng.random::<f64>() < 1.0 / self.options.shape.session_mean {
            self.sessions[s] = self.new_session();
        }
        let mut lag_s = self.rng.random_range(0..=self.options.jitter_s.max(0));
        if self.rng.random::<f64>() < self.options.late {
            lag_s += self.rng.random_range(1..=self.options.late_max_s.max(1));
        }
        Generated {
            produced_ms,
            event_time: produced_ms.div_euclid(1_000) - lag_s,
            event_type,
            product_id,
            category_id,
            category_code,
            brand,
            price,
            user_id,
            user_session,
            duplicate: false,
        }
    }
}

impl Iterator for Generator {
    type Item = Generated;

    fn next(&mut self) -> Option<Generated> {
        if self.emitted >= self.options.events {
            return None;
        }
        let produced_ms = self.production_ms(self.emitted);
        self.emitted += 1;
        if !self.recent.is_empty() && self.rng.random::<f64>() < self.options.duplicates {
            let original = &self.recent[self.rng.random_range(0..self.recent.len())];
            return Some(Generated { produced_ms, duplicate: true, ..original.clone() });
        }
        let event = self.fresh(produced_ms);
        if self.recent.len() < RECENT {
            self.recent.push(event.clone());
        } else {
            let slot = self.rng.random_range(0..RECENT);
            self.recent[slot] = event.clone();
        }
        Some(event)
    }
}

impl Generated {
    /// The event as the JSON object a producer sends (the source CSV's shape; time `YYYY-MM-DD HH:MM:SS UTC`).
    pub fn to_json(&self) -> Map<String, serde_json::Value> {
        let time = DateTime::<Utc>::from_timestamp(self.event_time, 0).expect("valid time");
        match json!({
            "event_time": time.format(TIME_FORMAT).to_string(),
            "event_type": self.event_type,
            "product_id": self.product_id,
            "category_id": self.category_id,
            "category_code": self.category_code,
            "brand": self.brand,
            "price": self.price,
            "user_id": self.user_id,
            "user_session": self.user_session,
        }) {
            serde_json::Value::Object(m) => m,
            _ => unreachable!("json! object"),
        }
    }

    /// The typed value of schema field `name`, as the decoder would produce it from [`Generated::to_json`].
    fn value(&self, name: &str) -> Option<Value> {
        Some(match name {
            "event_time" => Value::Timestamp(self.event_time * 1_000_000),
            "event_type" => Value::Str(self.event_type.to_owned()),
            "product_id" => Value::I64(self.product_id),
            "category_id" => Value::I64(self.category_id),
            "category_code" => Value::Str(self.category_code.to_owned()),
            "brand" => Value::Str(self.brand.to_owned()),
            // the exact decimal of the JSON text the event is produced with (`to_json`)
            "price" => Value::Decimal(
                common::decimal::parse_micros(&serde_json::to_string(&self.price).expect("a finite price"))
                    .expect("generated prices are in range"),
            ),
            "user_id" => Value::I64(self.user_id),
            "user_session" => Value::Str(self.user_session.clone()),
            _ => return None,
        })
    }
}

/// The demo's events: `n` events of the [builtin](Model::builtin) model over November 2019, no duplicates
/// or late events (the demo's producer adds its own duplicates).
pub fn default_events(n: usize, seed: u64) -> Vec<Map<String, serde_json::Value>> {
    let options = GenerateOptions { events: n as u64, seed, ..GenerateOptions::default() };
    Generator::new(&Model::builtin(), options).expect("builtin model is valid").map(|g| g.to_json()).collect()
}

/// Writes the events as JSON Lines to `out`; returns how many were duplicates.
pub fn write_jsonl(out: &Path, model: &Model, options: GenerateOptions) -> Result<u64> {
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut duplicates = 0;
    for g in Generator::new(model, options)? {
        duplicates += u64::from(g.duplicate);
        serde_json::to_writer(&mut w, &g.to_json())?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    Ok(duplicates)
}

/// What [`write_archive`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveReport {
    pub files: u64,
    pub events: u64,
    pub duplicates: u64,
    /// Log end offset per partition (records are at offsets 0..end).
    pub ends: BTreeMap<i32, i64>,
}

/// Writes the events straight into the archive layout of `config` under `root`
/// (`<root>/<topic>/partition=<p>/<first>-<next>.parquet`, DESIGN.md §4), as if the archiver had consumed
/// them from a `partitions`-partition topic: the partition is xxh3-64 of the message key
/// (`schema.message_key`) modulo `partitions`, offsets count up from 0 per partition, the Kafka timestamp is
/// the production time, and a file is cut every `file_records` records of a partition.
///
/// Errors: `root` already holds archive files of the topic (the generator never mixes with real data), the
/// schema has a field the e-commerce generator does not produce, or a write fails.
pub fn write_archive(
    root: &Path,
    config: &Config,
    partitions: i32,
    file_records: usize,
    model: &Model,
    options: GenerateOptions,
    mut progress: impl FnMut(u64),
) -> Result<ArchiveReport> {
    ensure!(partitions > 0, "--partitions must be at least 1");
    ensure!(file_records > 0, "records per file must be at least 1");
    let topic = &config.kafka.topic;
    if !batch_layer::archive::list(root, topic)?.is_empty() {
        bail!("{} already holds an archive of topic `{topic}`; generate into an empty directory", root.display());
    }
    let decoder = common::schema::Decoder::new(config);
    let fields = decoder.fields().to_vec();
    let probe = Generator::new(model, GenerateOptions { events: 1, ..options.clone() })?.next().expect("one event");
    for (name, _) in &fields {
        ensure!(probe.value(name).is_some(), "schema field `{name}` is not one the e-commerce generator produces");
    }
    let key_field = config.schema.message_key.clone();
    let time_field = fields.iter().position(|(n, _)| *n == config.schema.event_time).expect("validated");

    let mut pending: HashMap<i32, Vec<ArchivedRecord>> = HashMap::new();
    let mut report = ArchiveReport::default();
    let flush = |partition: i32, records: &mut Vec<ArchivedRecord>, report: &mut ArchiveReport| -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let first = records[0].offset;
        let next = first + records.len() as i64;
        let path = partition_dir(root, topic, partition).join(file_name(first, next));
        parquet_file::write(&path, partition, &fields, records)?;
        report.files += 1;
        records.clear();
        Ok(())
    };
    for g in Generator::new(model, options)? {
        let values: Vec<Value> = fields.iter().map(|(n, _)| g.value(n).expect("checked above")).collect();
        let key = key_field.as_deref().and_then(|f| g.value(f)).map(|v| match v {
            Value::Str(s) => s,
            Value::I64(i) => i.to_string(),
            other => format!("{other:?}"),
        });
        let partition = key.map_or(0, |k| (xxhash_rust::xxh3::xxh3_64(k.as_bytes()) % partitions as u64) as i32);
        let offset = report.ends.entry(partition).or_insert(0);
        let event_time = match values[time_field] {
            Value::Timestamp(t) => t,
            _ => unreachable!("event_time is a timestamp"),
        };
        let refs: Vec<_> = values.iter().map(Value::as_field_ref).collect();
        let event = Event { dedup_key: decoder.dedup_key(&refs), values, event_time };
        let records = pending.entry(partition).or_default();
        records.push(ArchivedRecord { offset: *offset, timestamp_ms: Some(g.produced_ms), event });
        *offset += 1;
        report.events += 1;
        report.duplicates += u64::from(g.duplicate);
        if records.len() >= file_records {
            flush(partition, records, &mut report)?;
        }
        if report.events % 100_000 == 0 {
            progress(report.events);
        }
    }
    let mut left: Vec<_> = pending.into_iter().collect();
    left.sort_by_key(|(p, _)| *p);
    for (partition, mut records) in left {
        flush(partition, &mut records, &mut report)?;
    }
    progress(report.events);
    Ok(report)
}

/// Hour of day (UTC) of a Unix time in seconds; used by tests of the fitted intensity.
pub fn hour_of_day(unix_s: i64) -> u32 {
    DateTime::<Utc>::from_timestamp(unix_s, 0).expect("valid").hour()
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::schema::{content_hash, Decoder};

    const SAMPLE: &str = "../shared/data/ecommerce/2019-Nov-sample.csv";

    fn sample_path() -> std::path::PathBuf {
        // The checkout the tests run in (cargo sets this when it runs them), not the one they were built in:
        // a shared CARGO_TARGET_DIR can hand a fresh clone binaries built elsewhere.
        let root = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
        Path::new(&root).join(SAMPLE)
    }

    #[test]
    fn generated_events_decode_with_the_same_dedup_key() {
        let config = Config::defaults();
        let decoder = Decoder::new(&config);
        let options = GenerateOptions { events: 5_000, duplicates: 0.05, late: 0.1, ..GenerateOptions::default() };
        for g in Generator::new(&Model::builtin(), options).unwrap() {
            let bytes = serde_json::to_vec(&g.to_json()).unwrap();
            let decoded = decoder.decode(&bytes).expect("generated events are valid");
            let values: Vec<Value> = decoder.fields().iter().map(|(n, _)| g.value(n).unwrap()).collect();
            assert_eq!(decoded.values, values, "the archive path types values as the decoder does");
            assert_eq!(decoded.dedup_key, Some(content_hash(&values)));
        }
        assert_eq!(default_events(50, 7), default_events(50, 7), "deterministic per seed");
    }

    #[test]
    fn fitted_model_reproduces_the_sample_mixes() {
        // Ground truth: counts taken from the CSV here, independently of `Model::fit`.
        let mut reader = csv::Reader::from_path(sample_path()).unwrap();
        let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        let share = |pred: &dyn Fn(&csv::StringRecord) -> bool| {
            rows.iter().filter(|r| pred(r)).count() as f64 / rows.len() as f64
        };
        let views_truth = share(&|r| &r[1] == "view");
        let phones_truth = share(&|r| &r[4] == "electronics.smartphone");
        let samsung_truth = share(&|r| &r[5] == "samsung");
        let afternoon_truth = share(&|r| (13..18).contains(&r[0][11..13].parse::<u32>().unwrap()));

        let model = Model::fit(&sample_path()).unwrap();
        assert_eq!(model.rows as usize, rows.len());
        let n = 200_000;
        let options = GenerateOptions { events: n, jitter_s: 0, ..GenerateOptions::default() };
        let events: Vec<Generated> = Generator::new(&model, options).unwrap().collect();
        let gshare = |pred: &dyn Fn(&Generated) -> bool| events.iter().filter(|g| pred(g)).count() as f64 / n as f64;
        // Binomial sd at n = 200k is below 0.0012 for these shares; the brand mix also varies with the
        // product pool, hence its wider band.
        let close = |name: &str, got: f64, want: f64, tol: f64| {
            assert!((got - want).abs() <= tol, "{name}: generated {got:.4}, sample {want:.4}");
        };
        close("view share", gshare(&|g| g.event_type == "view"), views_truth, 0.005);
        close("smartphone share", gshare(&|g| g.category_code == "electronics.smartphone"), phones_truth, 0.005);
        close("samsung share", gshare(&|g| g.brand == "samsung"), samsung_truth, 0.03);
        close("13-18h share", gshare(&|g| (13..18).contains(&hour_of_day(g.event_time))), afternoon_truth, 0.01);
        let (first, last) = (events[0].event_time, events[events.len() - 1].event_time);
        assert!(first >= model.span.0 - 86_400 && last <= model.span.1 + 3_600, "times stay in the fitted span");
        assert!(events.windows(2).all(|w| w[0].produced_ms <= w[1].produced_ms), "production order");
    }

    #[test]
    fn duplicates_and_late_events_come_in_the_requested_shares() {
        let n = 100_000;
        let options =
            GenerateOptions { events: n, duplicates: 0.05, late: 0.1, jitter_s: 0, ..GenerateOptions::default() };
        let events: Vec<Generated> = Generator::new(&Model::builtin(), options).unwrap().collect();
        let dups = events.iter().filter(|g| g.duplicate).count() as f64 / n as f64;
        assert!((dups - 0.05).abs() < 0.004, "duplicate share {dups}");
        // Independent check: a duplicate has the same content as an earlier event.
        let mut seen = std::collections::HashSet::new();
        let mut repeated = 0;
        for g in &events {
            let json = serde_json::to_string(&g.to_json()).unwrap();
            repeated += usize::from(!seen.insert(json));
        }
        assert_eq!(repeated, events.iter().filter(|g| g.duplicate).count());
        let fresh: Vec<&Generated> = events.iter().filter(|g| !g.duplicate).collect();
        let late = fresh.iter().filter(|g| g.event_time < g.produced_ms / 1_000).count() as f64 / fresh.len() as f64;
        assert!((late - 0.1).abs() < 0.005, "late share {late}");
    }
}
