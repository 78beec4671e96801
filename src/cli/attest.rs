//! Supply-chain commands: `kiln generate-key-pair`, `kiln sign`, `kiln verify`, `kiln sbom`,
//! `kiln attestations`, and the attestation step of `kiln build --sbom --provenance
//! --sign-key` (after the build, in the store; then into `-o type=oci` outputs and `--push`).
//!
//! IMAGE arguments name a registry image (cosign's reading: what is verified is what the
//! registry serves); `--local` reads kiln's store instead. The private key's password comes
//! from `$COSIGN_PASSWORD` (empty allowed), else a prompt on a terminal.

use super::GlobalOpts;
use crate::artifact::ArtifactDescriptor;
use crate::attest::{self, Source, sbom, sign};
use crate::digest::Digest;
use crate::reference::Reference;
use crate::registry::referrers::Remote;
use crate::store::Store;
use anyhow::{Context, Result, bail};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

/// The environment variable holding the private key's password (cosign's).
pub const PASSWORD_ENV: &str = "COSIGN_PASSWORD";

#[derive(clap::Args, Debug, Clone)]
pub struct Where {
    /// Read and write kiln's store instead of the registry.
    #[arg(long)]
    pub local: bool,
    /// Verify TLS certificates of registries (loopback registries are plain HTTP anyway).
    #[arg(long = "tls-verify", default_value_t = true, action = clap::ArgAction::Set)]
    pub tls_verify: bool,
    /// Credentials file (default: $REGISTRY_AUTH_FILE, else ~/.docker/config.json).
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct GenerateKeyPairArgs {
    /// Write PREFIX.key and PREFIX.pub.
    #[arg(long = "output-key-prefix", default_value = "cosign")]
    pub prefix: PathBuf,
    /// Replace existing files.
    #[arg(long)]
    pub force: bool,
}

#[derive(clap::Args, Debug)]
pub struct SignArgs {
    /// Private key file (cosign format).
    #[arg(long)]
    pub key: PathBuf,
    /// Also sign every attestation attached to the image.
    #[arg(long)]
    pub attestations: bool,
    #[command(flatten)]
    pub r#where: Where,
    /// The image.
    pub image: String,
}

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// Public key file (PEM).
    #[arg(long)]
    pub key: PathBuf,
    /// JSON policy of attestations that must be attached: {"require":[{"type":"sbom"},
    /// {"type":"provenance","signed":true}]}.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    #[command(flatten)]
    pub r#where: Where,
    /// The image.
    pub image: String,
}

#[derive(clap::Args, Debug)]
pub struct SbomArgs {
    /// spdx or cyclonedx.
    #[arg(long, default_value = "spdx")]
    pub format: String,
    /// Generate the SBOM from the image in the store instead of reading the attached one.
    #[arg(long)]
    pub generate: bool,
    #[command(flatten)]
    pub r#where: Where,
    /// The image.
    pub image: String,
}

#[derive(clap::Args, Debug)]
pub struct AttestationsArgs {
    /// Print the referrers as JSON (an OCI index).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub r#where: Where,
    /// The image.
    pub image: String,
}

/// Reads the key's password: `$COSIGN_PASSWORD`, else a prompt when stdin is a terminal.
fn password(confirm: bool) -> Result<Option<Vec<u8>>> {
    if let Some(p) = std::env::var_os(PASSWORD_ENV) {
        return Ok(Some(std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()).to_vec()));
    }
    if !std::io::stdin().is_terminal() {
        return Ok(None);
    }
    let read = |prompt: &str| -> Result<Vec<u8>> {
        use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let old = tcgetattr(&stdin).context("reading the terminal settings")?;
        let mut quiet = old.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
        tcsetattr(&stdin, SetArg::TCSANOW, &quiet).context("turning echo off")?;
        let mut line = String::new();
        let r = stdin.read_line(&mut line);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &old);
        eprintln!();
        r.context("reading the password")?;
        Ok(line.trim_end_matches(['\n', '\r']).as_bytes().to_vec())
    };
    let p = read("Enter password for private key: ")?;
    if confirm && read("Enter password for private key again: ")? != p {
        bail!("the passwords do not match");
    }
    Ok(Some(p))
}

/// Loads a private key file (the password from the environment or a prompt).
pub fn load_private_key(path: &Path) -> Result<sign::PrivateKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let encrypted = text.contains("ENCRYPTED");
    let pw = if encrypted { password(false)? } else { None };
    sign::PrivateKey::from_pem(&text, pw.as_deref()).with_context(|| format!("loading the key {}", path.display()))
}

fn load_public_key(path: &Path) -> Result<sign::PublicKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    sign::PublicKey::from_pem(&text).with_context(|| format!("loading the key {}", path.display()))
}

pub fn generate_key_pair(_g: &GlobalOpts, a: GenerateKeyPairArgs) -> Result<i32> {
    let key_path = a.prefix.with_extension("key");
    let pub_path = a.prefix.with_extension("pub");
    for p in [&key_path, &pub_path] {
        if p.exists() && !a.force {
            bail!("{} exists (--force replaces it)", p.display());
        }
    }
    let pw = password(true)?.with_context(|| {
        format!("set {PASSWORD_ENV} to the password for the new private key (empty is allowed), or run on a terminal")
    })?;
    let key = sign::PrivateKey::generate()?;
    let pem = key.to_encrypted_pem(&pw)?;
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&key_path)
            .with_context(|| format!("creating {}", key_path.display()))?;
        f.write_all(pem.as_bytes())
            .with_context(|| format!("writing {}", key_path.display()))?;
    }
    std::fs::write(&pub_path, key.public_key().to_pem()?).with_context(|| format!("writing {}", pub_path.display()))?;
    eprintln!(
        "Private key written to {}\nPublic key written to {}",
        key_path.display(),
        pub_path.display()
    );
    Ok(0)
}

/// An image named on the command line, resolved to its manifest digest locally or remotely.
struct Target {
    reference: Option<Reference>,
    subject: ArtifactDescriptor,
    remote: Option<Remote>,
}

fn resolve(g: &GlobalOpts, store: &Store, image: &str, w: &Where, push: bool) -> Result<Target> {
    if w.local {
        let d = store.resolve(image)?.ok_or_else(|| store.not_found(image))?;
        let bytes = store.read_json_blob(&d.digest, crate::image::JsonKind::Manifest)?;
        let mt = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("mediaType").and_then(|m| m.as_str()).map(str::to_string))
            .unwrap_or(d.media_type.clone());
        return Ok(Target {
            reference: Reference::parse(image).ok().filter(|_| !image.starts_with("sha256:")),
            subject: ArtifactDescriptor::of(&mt, &bytes),
            remote: None,
        });
    }
    let r = Reference::parse(image)?;
    let remote = Remote::new(&r, &g.registry_options(w.tls_verify, w.authfile.as_deref()), push)?;
    let subject = remote
        .resolve(&r.tag_or_digest())
        .with_context(|| format!("looking up {r}"))?;
    Ok(Target {
        reference: Some(r),
        subject,
        remote: Some(remote),
    })
}

impl Target {
    fn source<'a>(&'a self, store: &'a Store) -> Source<'a> {
        match &self.remote {
            Some(r) => Source::Remote(r, store),
            None => Source::Local(store),
        }
    }

    fn identity(&self) -> String {
        match &self.reference {
            Some(r) => sign::identity_of(r),
            None => self.subject.digest.to_string(),
        }
    }

    fn repository(&self) -> Option<String> {
        self.reference
            .as_ref()
            .map(|r| format!("{}/{}", r.registry, r.repository))
    }
}

pub fn sign_cmd(g: &GlobalOpts, a: SignArgs) -> Result<i32> {
    let store = g.store()?;
    let key = load_private_key(&a.key)?;
    let t = resolve(g, &store, &a.image, &a.r#where, true)?;
    let mut digests = vec![t.subject.digest.clone()];
    if a.attestations {
        digests.extend(
            t.source(&store)
                .referrers(&t.subject.digest)?
                .into_iter()
                .map(|(d, _)| d.digest),
        );
    }
    for d in &digests {
        match &t.remote {
            Some(r) => {
                let l = attest::signature_layer(&store, d, &t.identity(), &key)?;
                r.push_signatures(&store, d, &[l]).context("pushing the signature")?;
            }
            None => {
                attest::sign_local(&store, d, &t.identity(), &key)?;
            }
        }
        eprintln!("Signed {d} as {}", t.identity());
    }
    Ok(0)
}

pub fn verify_cmd(g: &GlobalOpts, a: VerifyArgs) -> Result<i32> {
    let store = g.store()?;
    let key = load_public_key(&a.key)?;
    let policy: Option<attest::Policy> = match &a.policy {
        Some(p) => {
            let data = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            Some(serde_json::from_slice(&data).with_context(|| format!("{} is not a valid kiln policy", p.display()))?)
        }
        None => None,
    };
    let t = resolve(g, &store, &a.image, &a.r#where, false)?;
    let src = t.source(&store);
    let repo = t.repository();
    let ok = attest::verify(&src, &t.subject.digest, repo.as_deref(), &key)
        .with_context(|| format!("verifying {}", a.image))?;
    for v in &ok {
        println!(
            "Verified signature of {} ({})",
            v.claim.digest, v.claim.docker_reference
        );
    }
    if let Some(p) = &policy {
        for line in attest::check_policy(&src, &t.subject.digest, repo.as_deref(), &key, p)? {
            println!("Policy: {line}");
        }
    }
    Ok(0)
}

pub fn sbom_cmd(g: &GlobalOpts, a: SbomArgs) -> Result<i32> {
    let store = g.store()?;
    let format = sbom::Format::parse(&a.format)?;
    if a.generate {
        let img = store.load_image(&a.image)?;
        let subject = sbom::Subject {
            name: a.image.clone(),
            digest: img.manifest_digest.clone(),
            created: created_of(&img),
        };
        std::io::stdout().write_all(&sbom::generate(&store, &img, &subject, format)?)?;
        return Ok(0);
    }
    let t = resolve(g, &store, &a.image, &a.r#where, false)?;
    let src = t.source(&store);
    let found = src
        .referrers(&t.subject.digest)?
        .into_iter()
        .find(|(_, m)| m.kind() == format.media_type());
    let Some((_, m)) = found else {
        bail!(
            "no {} SBOM is attached to {} ({}); `kiln sbom --generate` makes one from a local image",
            format.name(),
            a.image,
            t.subject.digest
        );
    };
    let layer = m.layers.first().context("the SBOM artifact has no layer")?;
    std::io::stdout().write_all(&src.blob(layer)?)?;
    Ok(0)
}

pub fn attestations_cmd(g: &GlobalOpts, a: AttestationsArgs) -> Result<i32> {
    let store = g.store()?;
    let t = resolve(g, &store, &a.image, &a.r#where, false)?;
    let src = t.source(&store);
    let refs = src.referrers(&t.subject.digest)?;
    if a.json {
        let mut idx = crate::artifact::ReferrersIndex::default();
        for (d, _) in &refs {
            idx.add(d.clone());
        }
        println!("{}", serde_json::to_string_pretty(&idx)?);
        return Ok(0);
    }
    println!("{}", t.subject.digest);
    for (d, m) in &refs {
        let size: u64 = m.layers.iter().map(|l| l.size).sum();
        println!("├── {} {} ({size} bytes)", attest::kind_name(m), d.digest);
    }
    if let Some(s) = src.signatures(&t.subject.digest)? {
        println!(
            "└── signatures: {} ({})",
            s.layers.len(),
            crate::artifact::signature_tag(&t.subject.digest)
        );
    }
    Ok(0)
}

fn created_of(img: &crate::image::Image) -> String {
    img.config
        .created
        .clone()
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string())
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// What `kiln build` was asked to attach.
#[derive(Clone, Debug, Default)]
pub struct BuildAttest {
    pub sbom: Vec<sbom::Format>,
    pub provenance: bool,
    pub sign_key: Option<PathBuf>,
}

impl BuildAttest {
    pub fn wanted(&self) -> bool {
        !self.sbom.is_empty() || self.provenance || self.sign_key.is_some()
    }
}

/// Parses `--sbom[=spdx|cyclonedx|spdx,cyclonedx]`.
pub fn parse_sbom_flag(v: Option<&str>) -> Result<Vec<sbom::Format>> {
    match v {
        None => Ok(Vec::new()),
        Some(s) => s
            .split(',')
            .filter(|x| !x.is_empty() && *x != "true")
            .map(sbom::Format::parse)
            .collect::<Result<Vec<_>>>()
            .map(|v| if v.is_empty() { vec![sbom::Format::Spdx] } else { v }),
    }
}

/// A digest of the build context's content as COPY sees it (.dockerignore applied): sorted
/// paths, modes and file contents (symlink targets for symlinks).
fn context_digest(context: &Path, dockerfile: &Path) -> Result<Digest> {
    use sha2::Digest as _;
    let ignore = if dockerfile.as_os_str() == "-" {
        crate::dockerfile::ignore::IgnoreMatcher::load(context, &context.join("Dockerfile"))?
    } else {
        crate::dockerfile::ignore::IgnoreMatcher::load(context, dockerfile)?
    };
    let mut h = sha2::Sha256::new();
    let mut stack = vec![PathBuf::new()];
    let mut entries = Vec::new();
    while let Some(rel) = stack.pop() {
        let dir = context.join(&rel);
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let r = rel.join(e.file_name());
            let rs = r.to_string_lossy().into_owned();
            let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if !is_dir && ignore.is_excluded(&rs) {
                continue;
            }
            if is_dir {
                stack.push(r);
            } else {
                entries.push(r);
            }
        }
    }
    entries.sort();
    for r in entries {
        let p = context.join(&r);
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        h.update(r.to_string_lossy().as_bytes());
        h.update([0]);
        h.update(std::os::unix::fs::PermissionsExt::mode(&md.permissions()).to_le_bytes());
        if md.file_type().is_symlink() {
            h.update(
                std::fs::read_link(&p)
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
        } else if md.is_file() {
            let mut f = std::fs::File::open(&p).with_context(|| format!("reading {}", p.display()))?;
            let mut fh = crate::digest::HashingWriter::new(std::io::sink());
            std::io::copy(&mut f, &mut fh).with_context(|| format!("reading {}", p.display()))?;
            h.update(fh.finish().1.hex().as_bytes());
        }
    }
    Digest::parse(&format!("sha256:{}", hex::encode(h.finalize())))
}

/// Everything the provenance of a build needs from the request.
pub struct BuildFacts<'a> {
    pub req: &'a crate::builder::BuildRequest,
    pub started: String,
}

/// The attestation step of `kiln build`: SBOMs and provenance attached to the built image in
/// the store, signatures made, then written into `-o type=oci` outputs. Returns the subject
/// digest (for the push step).
pub fn after_build(store: &Store, img: &crate::image::Image, want: &BuildAttest, f: &BuildFacts) -> Result<Digest> {
    let req = f.req;
    let subject = attest::subject_of(store, img)?;
    let name = req
        .output
        .tags
        .first()
        .cloned()
        .unwrap_or_else(|| subject.digest.to_string());
    let created = created_of(img);
    for fmt in &want.sbom {
        let s = sbom::Subject {
            name: name.clone(),
            digest: subject.digest.clone(),
            created: created.clone(),
        };
        let doc = sbom::generate(store, img, &s, *fmt).context("generating the SBOM")?;
        let d = attest::attach_sbom(store, &subject, *fmt, &doc, Some(&created))?;
        eprintln!("Attached {} SBOM {}", fmt.name(), d.digest);
    }
    if want.provenance {
        let stmt = attest::provenance::statement(&provenance_input(store, img, &subject.digest, f)?);
        let d = attest::attach_provenance(store, &subject, &stmt, Some(&created))?;
        eprintln!("Attached SLSA provenance {}", d.digest);
    }
    if let Some(k) = &want.sign_key {
        let key = load_private_key(k)?;
        let identity = match req.output.tags.first().map(|t| Reference::parse(t)).transpose()? {
            Some(r) => sign::identity_of(&r),
            None => subject.digest.to_string(),
        };
        let n = attest::sign_with_attestations(store, &subject.digest, &identity, &key)?;
        eprintln!(
            "Signed {} and its attestations ({n} signatures) as {identity}",
            subject.digest
        );
    }
    for o in &req.output.outputs {
        if let crate::builder::OutputSpec::Oci(dest) = o {
            let t = if dest.extension().is_some_and(|e| e == "tar") {
                crate::archive::Transport::OciArchive(dest.clone(), None)
            } else {
                crate::archive::Transport::OciLayout(dest.clone(), None)
            };
            attest::layout::export(store, img, &t)?;
        }
    }
    Ok(subject.digest)
}

fn provenance_input(
    store: &Store,
    img: &crate::image::Image,
    subject: &Digest,
    f: &BuildFacts,
) -> Result<attest::provenance::Input> {
    let req = f.req;
    let (text, df_name) = if req.source.dockerfile.as_os_str() == "-" {
        (None, "-".to_string())
    } else {
        let t = std::fs::read(&req.source.dockerfile)
            .with_context(|| format!("reading {}", req.source.dockerfile.display()))?;
        let n = req
            .source
            .dockerfile
            .strip_prefix(&req.source.context)
            .unwrap_or(&req.source.dockerfile)
            .to_string_lossy()
            .into_owned();
        (Some(t), n)
    };
    let mut base_images = Vec::new();
    if let Some(t) = &text {
        let df = crate::dockerfile::parse_bytes(t, &df_name)?;
        let plan = crate::plan::plan(
            &df,
            &crate::plan::BuildOptions {
                build_args: req.frontend.build_args.clone(),
                target: req.frontend.target.clone(),
                platform: req.frontend.platform.clone(),
            },
        )?;
        let mut seen = std::collections::BTreeSet::new();
        for s in &plan.stages {
            if let crate::plan::BaseRef::Image(r) = &s.base
                && seen.insert(r.clone())
                && let Some(d) = Reference::parse(r)
                    .ok()
                    .and_then(|p| store.resolve(&p.to_string()).ok().flatten())
            {
                base_images.push((r.clone(), d.digest));
            }
        }
    }
    let mut secret_values = Vec::new();
    for s in &req.run.secrets {
        if let Ok(v) = s.read() {
            secret_values.push(v);
        }
    }
    Ok(attest::provenance::Input {
        subjects: vec![(
            req.output.tags.first().cloned().unwrap_or_else(|| subject.to_string()),
            subject.clone(),
        )],
        dockerfile: text.as_ref().map(|t| (df_name.clone(), Digest::of(t))),
        target: req.frontend.target.clone(),
        platforms: vec![format!(
            "{}/{}{}",
            img.config.os,
            img.config.architecture,
            img.config.variant.as_ref().map(|v| format!("/{v}")).unwrap_or_default()
        )],
        build_args: req.frontend.build_args.clone(),
        labels: req.output.labels.clone(),
        secret_ids: req.run.secrets.iter().map(|s| s.id.clone()).collect(),
        secret_values,
        base_images,
        context: context_digest(&req.source.context, &req.source.dockerfile).ok(),
        materials: attest::materials::recorded(),
        started: f.started.clone(),
        finished: now_rfc3339(),
        invocation_id: None,
    })
}

/// Pushes what is attached to the image (after the image itself was pushed as `pushed`).
pub fn push_attached(
    store: &Store,
    img: &crate::image::Image,
    dest: &Reference,
    opts: &crate::registry::RegistryOptions,
    pushed: &Digest,
) -> Result<()> {
    let subject = attest::subject_of(store, img)?;
    let has = !store.referrers(&subject.digest)?.is_empty() || store.signatures(&subject.digest)?.is_some();
    if !has {
        return Ok(());
    }
    if &subject.digest != pushed {
        eprintln!(
            "kiln: warning: the attestations of {} name its stored manifest, but the push converted it to {pushed}: they were not pushed",
            subject.digest
        );
        return Ok(());
    }
    let remote = Remote::new(dest, opts, true)?;
    let rep =
        attest::push(store, &subject.digest, &remote).with_context(|| format!("pushing the attestations of {dest}"))?;
    let how = match rep.api {
        Some(true) => " (referrers API)",
        Some(false) => " (referrers tag schema)",
        None => "",
    };
    eprintln!(
        "Pushed {} attestations and {} signatures{how}",
        rep.referrers, rep.signatures
    );
    Ok(())
}
