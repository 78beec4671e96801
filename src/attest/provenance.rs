//! SLSA v1 provenance in an in-toto v1 statement.
//!
//! No secret value ever appears: `--secret` contributes its id only, build args whose name
//! looks like a secret (BuildKit's rule: an `_`-delimited word among apikey, auth, credential(s),
//! key, password, pword, passwd, secret, token) keep their name with the value redacted, and
//! the finished statement is scrubbed of every `--secret` value wherever it might have ended
//! up (a build arg holding the same string, a URL, a label).

use super::materials::Material;
use crate::digest::Digest;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// kiln's build type: a Dockerfile build.
pub const BUILD_TYPE: &str = "urn:kiln:buildtype:dockerfile:v1";
/// What replaces a secret value.
pub const REDACTED: &str = "[REDACTED]";

/// Everything the provenance records.
#[derive(Clone, Debug, Default)]
pub struct Input {
    /// (name, manifest digest) of each image built (one per platform).
    pub subjects: Vec<(String, Digest)>,
    /// The Dockerfile's name in the context and its digest.
    pub dockerfile: Option<(String, Digest)>,
    pub target: Option<String>,
    pub platforms: Vec<String>,
    /// `--build-arg`s as given (values of secret-looking names are redacted here).
    pub build_args: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    /// `--secret` ids (never their values).
    pub secret_ids: Vec<String>,
    /// The values of the `--secret`s, only to scrub them out.
    pub secret_values: Vec<Vec<u8>>,
    /// Base images: (reference as written, the manifest/index digest it resolved to).
    pub base_images: Vec<(String, Digest)>,
    /// A digest of the build context's content (.dockerignore applied).
    pub context: Option<Digest>,
    pub materials: Vec<Material>,
    pub started: String,
    pub finished: String,
    pub invocation_id: Option<String>,
}

/// Does this build-arg name look like it holds a secret?
pub fn secret_name(name: &str) -> bool {
    const WORDS: &[&str] = &[
        "apikey",
        "auth",
        "credential",
        "credentials",
        "key",
        "password",
        "pword",
        "passwd",
        "secret",
        "token",
    ];
    name.to_ascii_lowercase()
        .split(['_', '-', '.'])
        .any(|w| WORDS.contains(&w))
}

fn image_uri(r: &str) -> String {
    match crate::reference::Reference::parse(r) {
        Ok(p) => match &p.tag {
            Some(t) => format!("pkg:docker/{}/{}@{t}", p.registry, p.repository),
            None => format!("pkg:docker/{}/{}", p.registry, p.repository),
        },
        Err(_) => format!("pkg:docker/{r}"),
    }
}

fn sha(d: &Digest) -> Value {
    json!({"sha256": d.hex()})
}

/// The statement as JSON bytes (pretty, with a final newline).
pub fn statement(input: &Input) -> Vec<u8> {
    let subject: Vec<Value> = input
        .subjects
        .iter()
        .map(|(n, d)| json!({"name": n, "digest": sha(d)}))
        .collect();
    let args: Map<String, Value> = input
        .build_args
        .iter()
        .map(|(k, v)| {
            let v = if secret_name(k) {
                REDACTED.to_string()
            } else {
                v.clone()
            };
            (k.clone(), Value::String(v))
        })
        .collect();
    let mut ext = json!({
        "buildArgs": args,
        "platforms": input.platforms,
    });
    if let Some((name, d)) = &input.dockerfile {
        ext["dockerfile"] = json!({"name": name, "digest": sha(d)});
    }
    if let Some(t) = &input.target {
        ext["target"] = json!(t);
    }
    if !input.labels.is_empty() {
        ext["labels"] = json!(input.labels);
    }
    if !input.secret_ids.is_empty() {
        ext["secrets"] = json!(input.secret_ids);
    }
    let mut deps: Vec<Value> = Vec::new();
    for (r, d) in &input.base_images {
        deps.push(json!({"uri": image_uri(r), "digest": sha(d), "annotations": {"kiln.role": "base-image"}}));
    }
    if let Some(c) = &input.context {
        deps.push(json!({"name": "context", "digest": sha(c)}));
    }
    for m in &input.materials {
        deps.push(json!({"uri": m.uri, "digest": {m.algorithm.clone(): m.value}}));
    }
    let mut metadata = json!({"startedOn": input.started, "finishedOn": input.finished});
    if let Some(i) = &input.invocation_id {
        metadata["invocationId"] = json!(i);
    }
    let mut v = json!({
        "_type": STATEMENT_TYPE,
        "subject": subject,
        "predicateType": crate::artifact::SLSA_PROVENANCE_V1,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": ext,
                "internalParameters": {"kilnVersion": env!("CARGO_PKG_VERSION")},
                "resolvedDependencies": deps,
            },
            "runDetails": {
                "builder": {
                    "id": format!("urn:kiln:builder:kiln@{}", env!("CARGO_PKG_VERSION")),
                    "version": {"kiln": env!("CARGO_PKG_VERSION")},
                },
                "metadata": metadata,
            },
        },
    });
    let secrets: Vec<String> = input
        .secret_values
        .iter()
        .map(|s| String::from_utf8_lossy(s).trim_end_matches('\n').to_string())
        .filter(|s| s.len() >= 3)
        .collect();
    scrub(&mut v, &secrets);
    let mut out = serde_json::to_vec_pretty(&v).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Replaces every string (and map key) that contains one of `secrets`.
pub fn scrub(v: &mut Value, secrets: &[String]) {
    let hit = |s: &str| secrets.iter().any(|x| s.contains(x.as_str()));
    match v {
        Value::String(s) if hit(s) => *s = REDACTED.to_string(),
        Value::Array(a) => a.iter_mut().for_each(|x| scrub(x, secrets)),
        Value::Object(o) => {
            let old = std::mem::take(o);
            for (k, mut x) in old {
                scrub(&mut x, secrets);
                let k = if hit(&k) { REDACTED.to_string() } else { k };
                o.insert(k, x);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_appear() {
        assert!(secret_name("NPM_TOKEN"));
        assert!(secret_name("db_password"));
        assert!(secret_name("API_KEY"));
        assert!(!secret_name("KEYBOARD"));
        assert!(!secret_name("VERSION"));
        let mut args = BTreeMap::new();
        args.insert("NPM_TOKEN".to_string(), "tok-123456".to_string());
        args.insert("VERSION".to_string(), "1.2".to_string());
        args.insert("MIRROR".to_string(), "https://u:s3cr3t-value@example.com".to_string());
        let input = Input {
            subjects: vec![("r/app:1".into(), Digest::of(b"m"))],
            build_args: args,
            secret_ids: vec!["mysecret".into()],
            secret_values: vec![b"s3cr3t-value\n".to_vec()],
            base_images: vec![("debian:bookworm".into(), Digest::of(b"b"))],
            started: "2024-01-01T00:00:00Z".into(),
            finished: "2024-01-01T00:00:01Z".into(),
            ..Default::default()
        };
        let s = String::from_utf8(statement(&input)).unwrap();
        assert!(!s.contains("tok-123456"), "{s}");
        assert!(!s.contains("s3cr3t-value"), "{s}");
        assert!(s.contains("\"VERSION\": \"1.2\""), "{s}");
        assert!(s.contains("mysecret"));
        assert!(s.contains("pkg:docker/docker.io/library/debian@bookworm"));
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["predicateType"], "https://slsa.dev/provenance/v1");
        assert_eq!(v["subject"][0]["digest"]["sha256"], Digest::of(b"m").hex());
    }
}
