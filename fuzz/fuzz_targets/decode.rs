//! The event decoder under libFuzzer: any bytes either decode or are refused with a reason (the
//! dead-letter reason), never a panic; decoding is deterministic, and the borrowed and owned forms agree;
//! and the decoder agrees with the reference decoding of `tests/support/decoder_reference.rs` (written
//! apart from it, shared with `tests/decoder_corpus.rs`): both decode, to the same values, event time and
//! dedup key, or both refuse (the reasons are not compared).
#![no_main]

// `reference_micros` is there for the corpus test's known values
#[allow(dead_code)]
#[path = "../../tests/support/decoder_reference.rs"]
mod decoder_reference;

use std::sync::OnceLock;

use common::schema::{content_hash, Decoder};
use common::Config;
use libfuzzer_sys::fuzz_target;

fn setup() -> &'static (Config, Decoder) {
    static SETUP: OnceLock<(Config, Decoder)> = OnceLock::new();
    SETUP.get_or_init(|| {
        let config = Config::defaults();
        let decoder = Decoder::new(&config);
        (config, decoder)
    })
}

fuzz_target!(|data: &[u8]| {
    let (config, d) = setup();
    let expected = decoder_reference::reference(config, data);
    match d.decode(data) {
        Ok(event) => {
            let again = d.decode_ref(data).expect("decoding is deterministic").into_owned();
            assert_eq!(event, again, "the borrowed and owned forms agree");
            assert!(event.values.len() == d.fields().len());
            let Some((values, event_time)) = expected else {
                panic!("decoded {:?}, the reference refuses it", event.values);
            };
            assert_eq!(event.values, values, "the decoded values are the reference's");
            assert_eq!(event.event_time, event_time, "the event time is the reference's");
            assert_eq!(event.dedup_key, Some(content_hash(&values)), "the dedup key is the content hash");
        }
        Err(reason) => {
            assert!(!reason.0.trim().is_empty(), "a dead letter without a reason");
            if let Some((values, _)) = expected {
                panic!("refused ({reason}), the reference decodes {values:?}");
            }
        }
    }
});
