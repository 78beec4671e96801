//! Platform strings (`linux/amd64`, `linux/arm/v7`) and picking a manifest from an index.

use crate::image::{Descriptor, Index};
use anyhow::{Result, bail};
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformSpec {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl PlatformSpec {
    /// `os/arch[/variant]`; `None` means the host (`linux/<host arch>`).
    pub fn parse(s: Option<&str>) -> Result<PlatformSpec> {
        let Some(s) = s else {
            return Ok(PlatformSpec {
                os: "linux".into(),
                architecture: crate::image::host_arch().into(),
                variant: None,
            });
        };
        let parts: Vec<&str> = s.split('/').collect();
        if parts.len() < 2 || parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
            bail!("invalid platform {s:?}: expected os/arch[/variant], e.g. linux/amd64 or linux/arm64/v8");
        }
        let mut arch = parts[1].to_ascii_lowercase();
        let mut variant = parts.get(2).map(|v| v.to_ascii_lowercase());
        // Normalise as containerd does.
        match arch.as_str() {
            "x86_64" | "x86-64" => arch = "amd64".into(),
            "aarch64" => arch = "arm64".into(),
            "armhf" => {
                arch = "arm".into();
                variant.get_or_insert("v7".into());
            }
            "armel" => {
                arch = "arm".into();
                variant.get_or_insert("v6".into());
            }
            "i386" | "i686" => arch = "386".into(),
            _ => {}
        }
        Ok(PlatformSpec {
            os: parts[0].to_ascii_lowercase(),
            architecture: arch,
            variant,
        })
    }
}

impl fmt::Display for PlatformSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The variant an architecture means when none is given.
fn default_variant(arch: &str) -> Option<&'static str> {
    match arch {
        "arm64" => Some("v8"),
        "arm" => Some("v7"),
        _ => None,
    }
}

/// Picks the manifest for `want` from an index: os and architecture must match; the variant
/// must match when asked for (arm64 with no variant counts as v8). Without a wanted variant
/// the architecture's default variant is preferred, then the highest listed one. Attestation
/// manifests (`unknown/unknown`) are ignored.
pub fn select<'a>(index: &'a Index, want: &PlatformSpec) -> Result<&'a Descriptor> {
    let candidates: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| crate::image::is_manifest(&d.media_type) || d.media_type.is_empty())
        .filter(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == want.os && p.architecture == want.architecture)
        })
        .collect();
    let variant_of = |d: &Descriptor| -> Option<String> {
        let p = d.platform.as_ref()?;
        p.variant
            .clone()
            .or_else(|| default_variant(&p.architecture).map(String::from))
    };
    let pick = match &want.variant {
        Some(v) => candidates
            .iter()
            .find(|d| variant_of(d).as_deref() == Some(v.as_str()))
            .copied(),
        None => {
            let def = default_variant(&want.architecture);
            candidates
                .iter()
                .find(|d| variant_of(d).as_deref() == def)
                .copied()
                .or_else(|| candidates.iter().max_by_key(|d| variant_of(d)).copied())
        }
    };
    if let Some(d) = pick {
        return Ok(d);
    }
    let available: Vec<String> = index
        .manifests
        .iter()
        .filter_map(|d| d.platform.as_ref())
        .filter(|p| p.os != "unknown")
        .map(|p| {
            let mut s = format!("{}/{}", p.os, p.architecture);
            if let Some(v) = &p.variant {
                s.push('/');
                s.push_str(v);
            }
            s
        })
        .collect();
    bail!(
        "no image for platform {want} (available: {})",
        if available.is_empty() {
            "none listed".to_string()
        } else {
            available.join(", ")
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = r#"{
      "schemaVersion": 2,
      "mediaType": "application/vnd.oci.image.index.v1+json",
      "manifests": [
        {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","size":1,"platform":{"architecture":"amd64","os":"linux"}},
        {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222","size":1,"platform":{"architecture":"arm","os":"linux","variant":"v6"}},
        {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:3333333333333333333333333333333333333333333333333333333333333333","size":1,"platform":{"architecture":"arm","os":"linux","variant":"v7"}},
        {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:4444444444444444444444444444444444444444444444444444444444444444","size":1,"platform":{"architecture":"arm64","os":"linux"}},
        {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:5555555555555555555555555555555555555555555555555555555555555555","size":1,"platform":{"architecture":"unknown","os":"unknown"}},
        {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:6666666666666666666666666666666666666666666666666666666666666666","size":1,"platform":{"architecture":"s390x","os":"linux"}}
      ]}"#;

    #[test]
    fn selects_platforms() {
        let index: Index = serde_json::from_str(INDEX).unwrap();
        let pick =
            |p: &str| select(&index, &PlatformSpec::parse(Some(p)).unwrap()).map(|d| d.digest.hex()[..1].to_string());
        assert_eq!(pick("linux/amd64").unwrap(), "1");
        assert_eq!(pick("linux/x86_64").unwrap(), "1");
        assert_eq!(pick("linux/arm").unwrap(), "3", "arm defaults to v7");
        assert_eq!(pick("linux/arm/v6").unwrap(), "2");
        assert_eq!(pick("linux/arm64").unwrap(), "4");
        assert_eq!(pick("linux/arm64/v8").unwrap(), "4", "no variant on arm64 means v8");
        assert_eq!(pick("linux/s390x").unwrap(), "6");
        let err = pick("linux/ppc64le").unwrap_err().to_string();
        assert!(err.contains("no image for platform linux/ppc64le"), "{err}");
        assert!(err.contains("linux/arm/v6") && !err.contains("unknown"), "{err}");
        assert!(pick("windows/amd64").is_err());
        assert!(pick("linux/arm/v5").is_err());
    }

    #[test]
    fn parses_platforms() {
        assert!(PlatformSpec::parse(Some("linux")).is_err());
        assert!(PlatformSpec::parse(Some("linux/")).is_err());
        assert!(PlatformSpec::parse(Some("a/b/c/d")).is_err());
        assert_eq!(
            PlatformSpec::parse(Some("linux/armhf")).unwrap().to_string(),
            "linux/arm/v7"
        );
        assert_eq!(PlatformSpec::parse(None).unwrap().os, "linux");
    }
}
