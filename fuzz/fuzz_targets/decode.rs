//! The event decoder under libFuzzer: any bytes either decode or are refused with a reason (the
//! dead-letter reason), never a panic; decoding is deterministic, and the borrowed and owned forms agree.
#![no_main]

use std::sync::OnceLock;

use common::schema::Decoder;
use common::Config;
use libfuzzer_sys::fuzz_target;

fn decoder() -> &'static Decoder {
    static DECODER: OnceLock<Decoder> = OnceLock::new();
    DECODER.get_or_init(|| Decoder::new(&Config::defaults()))
}

fuzz_target!(|data: &[u8]| {
    let d = decoder();
    match d.decode(data) {
        Ok(event) => {
            let again = d.decode_ref(data).expect("decoding is deterministic").into_owned();
            assert_eq!(event, again, "the borrowed and owned forms agree");
            assert!(event.values.len() == d.fields().len());
        }
        Err(reason) => assert!(!reason.0.trim().is_empty(), "a dead letter without a reason"),
    }
});
