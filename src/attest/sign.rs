//! cosign-format, key-based signatures: ECDSA P-256 over a "simple signing" payload that names
//! the manifest digest, with keys in the PEM files `cosign generate-key-pair` writes.
//!
//! - Private key: `-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----` (cosign ≥ 2; cosign 1 wrote
//!   `ENCRYPTED COSIGN PRIVATE KEY`, also read), whose body is the JSON envelope of
//!   go-securesystemslib's `encrypted` package: `{"kdf":{"name":"scrypt","params":{"N","r","p"},
//!   "salt"},"cipher":{"name":"nacl/secretbox","nonce"},"ciphertext"}` (byte strings in
//!   standard base64), the plaintext being the PKCS#8 DER of the key. Unencrypted PKCS#8
//!   (`PRIVATE KEY`) and SEC1 (`EC PRIVATE KEY`) keys are read too.
//! - Public key: `-----BEGIN PUBLIC KEY-----` (PKIX DER).
//! - Payload: `{"critical":{"identity":{"docker-reference":R},"image":{"docker-manifest-digest":D},
//!   "type":"cosign container image signature"},"optional":…}`; the signature is the ASN.1 DER
//!   ECDSA signature of the payload's SHA-256, base64-encoded in the layer annotation
//!   `dev.cosignproject.cosign/signature` (see [`super::MT_COSIGN_SIMPLESIGNING`]).

use crate::digest::Digest;
use crate::reference::Reference;
use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{DerSignature, Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use serde::{Deserialize, Serialize};

/// The `critical.type` of a cosign container image signature.
pub const SIGNATURE_TYPE: &str = "cosign container image signature";

const PEM_ENCRYPTED: &str = "ENCRYPTED SIGSTORE PRIVATE KEY";
const PEM_ENCRYPTED_COSIGN: &str = "ENCRYPTED COSIGN PRIVATE KEY";
/// scrypt cost kiln writes: N = 2^15, r = 8, p = 1 (go-securesystemslib's long-standing
/// default, read by every cosign and containers/image version). Any power of two is read.
const SCRYPT_LOG_N: u8 = 15;
const SCRYPT_R: u32 = 8;
const SCRYPT_P: u32 = 1;

/// A private signing key.
#[derive(Clone)]
pub struct PrivateKey {
    key: SigningKey,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(ECDSA P-256)")
    }
}

/// A public verification key.
#[derive(Clone, Debug)]
pub struct PublicKey {
    key: VerifyingKey,
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    kdf: Kdf,
    cipher: Cipher,
    #[serde(with = "b64")]
    ciphertext: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Kdf {
    name: String,
    params: ScryptParams,
    #[serde(with = "b64")]
    salt: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct ScryptParams {
    #[serde(rename = "N")]
    n: u64,
    r: u32,
    p: u32,
}

#[derive(Serialize, Deserialize)]
struct Cipher {
    name: String,
    #[serde(with = "b64")]
    nonce: Vec<u8>,
}

mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::B64.encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        super::B64.decode(s.trim()).map_err(serde::de::Error::custom)
    }
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).map_err(|e| anyhow!("reading random bytes from the kernel: {e}"))?;
    Ok(b)
}

/// PEM armour: `label`, base64 in 64-column lines.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b = B64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The first PEM block of `text`: (label, DER). Headers (`Key: value` lines) are skipped.
pub fn pem_decode(text: &str) -> Result<(String, Vec<u8>)> {
    let start = text
        .find("-----BEGIN ")
        .ok_or_else(|| anyhow!("not a PEM file (no -----BEGIN line)"))?;
    let rest = &text[start + 11..];
    let label_end = rest.find("-----").ok_or_else(|| anyhow!("malformed PEM BEGIN line"))?;
    let label = rest[..label_end].to_string();
    let body_start = label_end + 5;
    let end_marker = format!("-----END {label}-----");
    let body_end = rest
        .find(&end_marker)
        .ok_or_else(|| anyhow!("PEM block {label} has no {end_marker} line"))?;
    let body: String = rest[body_start..body_end]
        .lines()
        .filter(|l| !l.contains(':'))
        .flat_map(|l| l.chars())
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = B64
        .decode(body)
        .with_context(|| format!("PEM block {label}: invalid base64"))?;
    Ok((label, der))
}

impl PrivateKey {
    /// A new random key.
    pub fn generate() -> Result<PrivateKey> {
        loop {
            let bytes: [u8; 32] = random_bytes()?;
            if let Ok(key) = SigningKey::from_bytes(&bytes.into()) {
                return Ok(PrivateKey { key });
            }
        }
    }

    /// The key as cosign writes it: encrypted with `password` (which may be empty, as
    /// `COSIGN_PASSWORD=` makes cosign write).
    pub fn to_encrypted_pem(&self, password: &[u8]) -> Result<String> {
        use crypto_secretbox::aead::{Aead, KeyInit};
        let der = self.key.to_pkcs8_der().context("encoding the private key")?;
        let salt: [u8; 32] = random_bytes()?;
        let nonce: [u8; 24] = random_bytes()?;
        let box_key = derive(password, &salt, SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P)?;
        let cipher = crypto_secretbox::XSalsa20Poly1305::new(&box_key.into());
        let ciphertext = cipher
            .encrypt(&nonce.into(), der.as_bytes())
            .map_err(|_| anyhow!("encrypting the private key failed"))?;
        let env = Envelope {
            kdf: Kdf {
                name: "scrypt".into(),
                params: ScryptParams {
                    n: 1 << SCRYPT_LOG_N,
                    r: SCRYPT_R,
                    p: SCRYPT_P,
                },
                salt: salt.to_vec(),
            },
            cipher: Cipher {
                name: "nacl/secretbox".into(),
                nonce: nonce.to_vec(),
            },
            ciphertext,
        };
        let json = serde_json::to_vec(&env).context("serialising the key envelope")?;
        Ok(pem_encode(PEM_ENCRYPTED, &json))
    }

    /// Reads a private key file's text. Encrypted keys need `password`; without one the error
    /// says which environment variable to set (the CLI reads `COSIGN_PASSWORD`).
    pub fn from_pem(text: &str, password: Option<&[u8]>) -> Result<PrivateKey> {
        let (label, der) = pem_decode(text)?;
        let key = match label.as_str() {
            PEM_ENCRYPTED | PEM_ENCRYPTED_COSIGN => {
                let password = password.ok_or_else(|| {
                    anyhow!("the private key is encrypted: set COSIGN_PASSWORD to its password (empty is allowed)")
                })?;
                let plain = decrypt(&der, password)?;
                SigningKey::from_pkcs8_der(&plain).context("the decrypted key is not a PKCS#8 ECDSA P-256 key")?
            }
            "PRIVATE KEY" => SigningKey::from_pkcs8_der(&der).context("not a PKCS#8 ECDSA P-256 private key")?,
            "EC PRIVATE KEY" => {
                let sk = p256::SecretKey::from_sec1_der(&der).context("not a SEC1 ECDSA P-256 private key")?;
                SigningKey::from(sk)
            }
            other => bail!(
                "unsupported private key type {other:?} (expected {PEM_ENCRYPTED}, PRIVATE KEY or EC PRIVATE KEY)"
            ),
        };
        Ok(PrivateKey { key })
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            key: *self.key.verifying_key(),
        }
    }

    /// Signs `payload`: base64 of the DER ECDSA signature over its SHA-256 (deterministic,
    /// RFC 6979).
    pub fn sign(&self, payload: &[u8]) -> String {
        let sig: Signature = self.key.sign(payload);
        let der: DerSignature = sig.to_der();
        B64.encode(der.as_bytes())
    }
}

fn derive(password: &[u8], salt: &[u8], log_n: u8, r: u32, p: u32) -> Result<[u8; 32]> {
    let params = scrypt::Params::new(log_n, r, p, 32).map_err(|e| anyhow!("invalid scrypt parameters: {e}"))?;
    let mut out = [0u8; 32];
    scrypt::scrypt(password, salt, &params, &mut out).map_err(|e| anyhow!("scrypt: {e}"))?;
    Ok(out)
}

fn decrypt(envelope: &[u8], password: &[u8]) -> Result<Vec<u8>> {
    use crypto_secretbox::aead::{Aead, KeyInit};
    let env: Envelope = serde_json::from_slice(envelope).context("the encrypted key's envelope is not valid JSON")?;
    if env.kdf.name != "scrypt" {
        bail!("unsupported key derivation {:?} (expected scrypt)", env.kdf.name);
    }
    if env.cipher.name != "nacl/secretbox" {
        bail!("unsupported key cipher {:?} (expected nacl/secretbox)", env.cipher.name);
    }
    let n = env.kdf.params.n;
    if n < 2 || !n.is_power_of_two() || n > 1 << 24 {
        bail!("unsupported scrypt cost N={n}");
    }
    let nonce: [u8; 24] = env
        .cipher
        .nonce
        .as_slice()
        .try_into()
        .map_err(|_| anyhow!("the key's nonce is not 24 bytes"))?;
    let key = derive(
        password,
        &env.kdf.salt,
        n.trailing_zeros() as u8,
        env.kdf.params.r,
        env.kdf.params.p,
    )?;
    let cipher = crypto_secretbox::XSalsa20Poly1305::new(&key.into());
    cipher
        .decrypt(&nonce.into(), env.ciphertext.as_slice())
        .map_err(|_| anyhow!("wrong password for the private key (or the key file is damaged)"))
}

impl PublicKey {
    pub fn from_pem(text: &str) -> Result<PublicKey> {
        let (label, der) = pem_decode(text)?;
        if label != "PUBLIC KEY" {
            bail!("expected a PUBLIC KEY PEM block, found {label:?}");
        }
        let key = VerifyingKey::from_public_key_der(&der).context("not an ECDSA P-256 public key")?;
        Ok(PublicKey { key })
    }

    pub fn to_pem(&self) -> Result<String> {
        self.key
            .to_public_key_pem(LineEnding::LF)
            .context("encoding the public key")
    }

    /// Checks a base64 DER (or raw r‖s) ECDSA signature of `payload`.
    pub fn verify(&self, payload: &[u8], signature_b64: &str) -> Result<()> {
        let raw = B64
            .decode(signature_b64.trim())
            .context("the signature is not valid base64")?;
        let sig = Signature::from_der(&raw)
            .or_else(|_| Signature::from_slice(&raw))
            .context("the signature is not an ECDSA signature")?;
        self.key
            .verify(payload, &sig)
            .map_err(|_| anyhow!("the signature does not match the payload and the key"))
    }
}

/// The simple-signing payload for `digest` under the identity `docker_reference` (the
/// repository, with the tag when the user named one), in cosign's byte form (keys sorted,
/// `"optional":null`).
pub fn payload(digest: &Digest, docker_reference: &str) -> Vec<u8> {
    let v = serde_json::json!({
        "critical": {
            "identity": {"docker-reference": docker_reference},
            "image": {"docker-manifest-digest": digest.as_str()},
            "type": SIGNATURE_TYPE,
        },
        "optional": null,
    });
    serde_json::to_vec(&v).unwrap_or_default()
}

/// The identity a signature of `r` carries: `registry/repository[:tag]`.
pub fn identity_of(r: &Reference) -> String {
    match &r.tag {
        Some(t) if r.digest.is_none() => format!("{}/{}:{t}", r.registry, r.repository),
        _ => format!("{}/{}", r.registry, r.repository),
    }
}

/// What a verified payload says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub digest: Digest,
    pub docker_reference: String,
}

/// Parses a payload and checks that it is a cosign container image signature of `digest`
/// whose identity is in `repository` (`registry/repo`; the tag, if any, is not compared).
pub fn check_payload(payload: &[u8], digest: &Digest, repository: Option<&str>) -> Result<Claim> {
    let v: serde_json::Value = serde_json::from_slice(payload).context("the signed payload is not JSON")?;
    let c = v
        .get("critical")
        .ok_or_else(|| anyhow!("the signed payload has no critical section"))?;
    let t = c.get("type").and_then(|t| t.as_str()).unwrap_or("");
    if t != SIGNATURE_TYPE {
        bail!("the signed payload is a {t:?}, not a {SIGNATURE_TYPE:?}");
    }
    let d = c
        .pointer("/image/docker-manifest-digest")
        .and_then(|d| d.as_str())
        .ok_or_else(|| anyhow!("the signed payload names no manifest digest"))?;
    if d != digest.as_str() {
        bail!("the signature is for {d}, not for {digest}");
    }
    let r = c
        .pointer("/identity/docker-reference")
        .and_then(|d| d.as_str())
        .unwrap_or("")
        .to_string();
    if let Some(want) = repository {
        let got = Reference::parse(&r)
            .map(|p| format!("{}/{}", p.registry, p.repository))
            .unwrap_or_default();
        let want = Reference::parse(want)
            .map(|p| format!("{}/{}", p.registry, p.repository))
            .unwrap_or_else(|_| want.to_string());
        if got != want {
            bail!("the signature is for {r:?}, not for the repository {want}");
        }
    }
    Ok(Claim {
        digest: digest.clone(),
        docker_reference: r,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypted_key_round_trip_and_wrong_password() {
        let k = PrivateKey::generate().unwrap();
        let pem = k.to_encrypted_pem(b"hunter2").unwrap();
        assert!(pem.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n"));
        let (_, body) = pem_decode(&pem).unwrap();
        let env: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(env["kdf"]["params"]["N"], 32768);
        assert_eq!(env["cipher"]["name"], "nacl/secretbox");
        let back = PrivateKey::from_pem(&pem, Some(b"hunter2")).unwrap();
        assert_eq!(back.public_key().to_pem().unwrap(), k.public_key().to_pem().unwrap());
        let e = PrivateKey::from_pem(&pem, Some(b"nope")).unwrap_err();
        assert!(format!("{e:#}").contains("wrong password"), "{e:#}");
        let e = PrivateKey::from_pem(&pem, None).unwrap_err();
        assert!(format!("{e:#}").contains("COSIGN_PASSWORD"), "{e:#}");
    }

    #[test]
    fn sign_verify_and_payload_checks() {
        let k = PrivateKey::generate().unwrap();
        let d = Digest::of(b"manifest");
        let r = Reference::parse("127.0.0.1:5000/app:1").unwrap();
        let p = payload(&d, &identity_of(&r));
        assert_eq!(
            String::from_utf8(p.clone()).unwrap(),
            format!(
                r#"{{"critical":{{"identity":{{"docker-reference":"127.0.0.1:5000/app:1"}},"image":{{"docker-manifest-digest":"{d}"}},"type":"cosign container image signature"}},"optional":null}}"#
            )
        );
        let sig = k.sign(&p);
        let pubk = PublicKey::from_pem(&k.public_key().to_pem().unwrap()).unwrap();
        pubk.verify(&p, &sig).unwrap();
        let mut bad = p.clone();
        bad[10] ^= 1;
        assert!(pubk.verify(&bad, &sig).is_err());
        let other = PrivateKey::generate().unwrap().public_key();
        assert!(other.verify(&p, &sig).is_err());
        check_payload(&p, &d, Some("127.0.0.1:5000/app")).unwrap();
        assert!(check_payload(&p, &Digest::of(b"x"), None).is_err());
        assert!(check_payload(&p, &d, Some("127.0.0.1:5000/other")).is_err());
    }

    #[test]
    fn reads_unencrypted_pkcs8() {
        let k = PrivateKey::generate().unwrap();
        let der = k.key.to_pkcs8_der().unwrap();
        let pem = pem_encode("PRIVATE KEY", der.as_bytes());
        let back = PrivateKey::from_pem(&pem, None).unwrap();
        assert_eq!(back.public_key().to_pem().unwrap(), k.public_key().to_pem().unwrap());
    }
}
