//! Fuzzes request inspection: any body must be refused with an error or passed on, and a
//! body that gets usage injected must stay valid JSON that asks for it (as weir reads it:
//! the last of repeated keys counts, numbers of any size).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use weir::inspect::inspect;

fuzz_target!(|input: &[u8]| {
    let body = Bytes::copy_from_slice(input);
    if let Ok(i) = inspect(body.clone(), true) {
        if i.strip_usage {
            serde_json::from_slice::<serde::de::IgnoredAny>(&i.body).expect("injected body is JSON");
            let again = inspect(i.body.clone(), true).expect("injected body is inspected");
            assert!(again.stream && !again.strip_usage, "the injected body asks for usage");
            assert_eq!((again.model, again.max_tokens, again.n), (i.model, i.max_tokens, i.n));
        } else {
            assert_eq!(i.body, body, "untouched unless usage was injected");
        }
    }
});
