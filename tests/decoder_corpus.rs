//! Issue 12, item 3: the event decoder against a reference decoding, over a corpus and its mutations.
//!
//! Inputs: the sample's records as the producer sends them (read from `../shared`, not copied), the
//! committed corpus `tests/corpus/decode/` (hand-made edge cases and inputs a fuzzer found), and 40
//! seeded mutations of each (bit flips, byte edits, splices, numbers and times swapped for edge values,
//! repeated keys). The invariant for every input: the decoder never panics; it decodes the record or
//! refuses it with a non-empty reason (the dead-letter reason); it decodes exactly when the reference
//! does, to the same values, event time and dedup key.
//!
//! The reference (`tests/support/decoder_reference.rs`, shared with the fuzz target `fuzz/`) is written
//! apart from the decoder: serde_json splits the object into its (key, raw value) pairs and plain string
//! rules type each field's text.

#[path = "support/decoder_reference.rs"]
mod decoder_reference;

use std::path::Path;

use common::schema::{content_hash, Decoder, Value};
use common::Config;
use decoder_reference::{reference, reference_micros};

/// Seeded mutations of `input` (xorshift64*: the same inputs on every run).
fn mutations(input: &[u8], seed: u64, count: usize) -> Vec<Vec<u8>> {
    const EDGES: &[&str] = &[
        "0",
        "-0",
        "1e15",
        "1000000000000000.0000005",
        "-1e15",
        "1e16",
        "0.0000005",
        "-0.0000005",
        "0.00000049999",
        "1e-400",
        "1E+3",
        "9007199254740993",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775809",
        "1.",
        ".5",
        "01",
        "1e",
        "\"x\"",
        "null",
        "true",
        "[]",
        "{}",
        "\"2019-11-08 08:14:53 UTC\"",
        "\"2019-11-08T08:14:53.123456789+14:00\"",
        "\"2019-02-29 00:00:00 UTC\"",
        "\"2016-12-31 23:59:60 UTC\"",
        "\"\\u0000\"",
        "\"\\ud800\"",
        "\"é\"",
    ];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    (0..count)
        .map(|_| {
            let mut m = input.to_vec();
            for _ in 0..1 + next() % 3 {
                let at = if m.is_empty() { 0 } else { (next() % m.len() as u64) as usize };
                match next() % 6 {
                    0 if !m.is_empty() => m[at] ^= 1 << (next() % 8),
                    1 => m.insert(at, (next() % 256) as u8),
                    2 if !m.is_empty() => {
                        m.remove(at);
                    }
                    3 => {
                        // a value (after a ':') replaced by an edge value
                        if let Some(colon) = m[at..].iter().position(|&b| b == b':') {
                            let start = at + colon + 1;
                            let end =
                                m[start..].iter().position(|&b| b == b',' || b == b'}').map_or(m.len(), |e| start + e);
                            let edge = EDGES[(next() % EDGES.len() as u64) as usize];
                            m.splice(start..end, edge.bytes());
                        }
                    }
                    4 => {
                        // a key repeated with another value at the end of the object
                        if let Some(close) = m.iter().rposition(|&b| b == b'}') {
                            let keys = ["event_time", "price", "user_id", "brand", "product_id"];
                            let key = keys[(next() % keys.len() as u64) as usize];
                            let edge = EDGES[(next() % EDGES.len() as u64) as usize];
                            m.splice(close..close, format!(",\"{key}\":{edge}").into_bytes());
                        }
                    }
                    _ => {
                        // a splice of the input with itself
                        let from = (next() % (input.len() as u64 + 1)) as usize;
                        let to = from + (next() % (input.len() - from + 1) as u64) as usize;
                        m.splice(at..at, input[from..to].iter().copied());
                    }
                }
            }
            m
        })
        .collect()
}

/// Checks one input; a description of the disagreement, if any.
fn check(decoder: &Decoder, config: &Config, input: &[u8]) -> Option<String> {
    let decoded = match std::panic::catch_unwind(|| decoder.decode(input)) {
        Ok(d) => d,
        Err(_) => return Some("the decoder panicked".into()),
    };
    let expected = reference(config, input);
    match (decoded, expected) {
        (Ok(event), Some((values, event_time))) => {
            if event.values != values || event.event_time != event_time {
                return Some(format!(
                    "decoded {:?} at {}, the reference {values:?} at {event_time}",
                    event.values, event.event_time
                ));
            }
            (event.dedup_key != Some(content_hash(&values))).then(|| "the dedup key is not the content hash".into())
        }
        (Err(reason), None) => reason.0.trim().is_empty().then(|| "a dead letter without a reason".into()),
        (Ok(event), None) => Some(format!("decoded {:?}, the reference refuses it", event.values)),
        (Err(reason), Some((values, _))) => Some(format!("refused ({reason}), the reference decodes {values:?}")),
    }
}

#[test]
fn the_decoder_agrees_with_the_reference_on_the_corpus_and_its_mutations() {
    let config = Config::defaults();
    let decoder = Decoder::new(&config);
    let sample = lambda::produce::read_file(&support_sample_path(), &config).expect("the sample");
    let mut seeds: Vec<Vec<u8>> = sample.iter().step_by(50).map(|m| m.payload.clone()).collect();
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/decode");
    let mut files: Vec<_> =
        std::fs::read_dir(&corpus).expect("tests/corpus/decode").flatten().map(|e| e.path()).collect();
    files.sort();
    assert!(files.len() >= 20, "the committed corpus has {} inputs", files.len());
    seeds.extend(files.iter().map(|f| std::fs::read(f).unwrap()));

    let (mut decoded, mut refused, mut failures) = (0usize, 0usize, Vec::new());
    for (i, seed) in seeds.iter().enumerate() {
        for input in std::iter::once(seed.clone()).chain(mutations(seed, i as u64 + 1, 40)) {
            match check(&decoder, &config, &input) {
                Some(problem) => failures.push(format!("{problem}\n    input: {}", String::from_utf8_lossy(&input))),
                None if decoder.decode(&input).is_ok() => decoded += 1,
                None => refused += 1,
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} disagreements, first ones:\n{}",
        failures.len(),
        failures[..failures.len().min(5)].join("\n")
    );
    // the mutations must exercise both outcomes, or this test checks little
    assert!(decoded > 1_000 && refused > 1_000, "decoded {decoded}, refused {refused}");
}

/// The reference's own rules on known values (so a wrong reference cannot hide a wrong decoder).
#[test]
fn the_reference_is_right_on_known_values() {
    assert_eq!(reference_micros("776.74"), Some(776_740_000));
    assert_eq!(reference_micros("-0.0000005"), Some(-1));
    assert_eq!(reference_micros("0.00000049999"), Some(0));
    assert_eq!(reference_micros("1E+3"), Some(1_000_000_000));
    assert_eq!(reference_micros("1e15"), Some(1_000_000_000_000_000_000_000));
    assert_eq!(reference_micros("1e16"), None);
    assert_eq!(reference_micros("1e-400"), Some(0));
    assert_eq!(reference_micros("01"), None);
    assert_eq!(reference_micros("1."), None);
    let config = Config::defaults();
    let (values, t) = reference(&config, br#"{"event_time":"2019-11-08 08:14:53 UTC","price":1,"price":2.5}"#).unwrap();
    assert_eq!(t, 1_573_200_893_000_000);
    assert_eq!(values[6], Value::Decimal(2_500_000), "the last of a repeated key counts");
    assert!(reference(&config, br#"{"event_time":"2019-11-08 08:14:53 UTC","price":"x","price":2}"#).is_none());
    assert!(reference(&config, br#"{"price":2}"#).is_none(), "no event time");
}

fn support_sample_path() -> std::path::PathBuf {
    let root = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    Path::new(&root).join("../shared/data/ecommerce/2019-Nov-sample.csv")
}
