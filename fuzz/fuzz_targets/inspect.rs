//! Fuzzes request inspection: any body must be refused with an error or passed on, and a
//! body that gets usage injected must stay valid JSON that asks for it.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use weir::inspect::inspect;

fuzz_target!(|input: &[u8]| {
    let body = Bytes::copy_from_slice(input);
    if let Ok(i) = inspect(body.clone(), true) {
        if i.strip_usage {
            let v: serde_json::Value = serde_json::from_slice(&i.body).expect("injected body is JSON");
            assert_eq!(v["stream_options"]["include_usage"], true);
        } else {
            assert_eq!(i.body, body, "untouched unless usage was injected");
        }
    }
});
