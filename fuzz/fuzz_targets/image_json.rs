//! `cargo fuzz run image_json`: manifest, index, config and build-cache JSON decoding never
//! panics, and what decodes re-encodes and decodes again.
#![no_main]
use kiln::image::{Descriptor, ImageConfig, Index, Manifest};
use libfuzzer_sys::fuzz_target;

fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(data: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<T>(data) {
        let bytes = serde_json::to_vec(&v).expect("re-encoding");
        serde_json::from_slice::<T>(&bytes).expect("decoding what was encoded");
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<Manifest>(data);
    round_trip::<Index>(data);
    round_trip::<ImageConfig>(data);
    round_trip::<Descriptor>(data);
    round_trip::<kiln::builder::cache::Entry>(data);
    let _ = kiln::store::oci_view_of_manifest(data);
    if let Ok(m) = serde_json::from_slice::<Manifest>(data) {
        for l in &m.layers {
            let _ = kiln::image::Compression::of_media_type(&l.media_type);
        }
    }
});
