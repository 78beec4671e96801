use super::*;
use crate::dockerfile::{self, parse};

fn df(text: &str) -> Dockerfile {
    parse(text, "Dockerfile").unwrap_or_else(|e| panic!("{e:#}"))
}

fn args(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn plan_with(text: &str, build_args: &[(&str, &str)], target: Option<&str>) -> Result<Plan> {
    plan(
        &df(text),
        &BuildOptions {
            build_args: args(build_args),
            target: target.map(String::from),
            platform: None,
        },
    )
}

fn ok(text: &str, build_args: &[(&str, &str)], target: Option<&str>) -> Plan {
    plan_with(text, build_args, target).unwrap_or_else(|e| panic!("{e:#}"))
}

fn indexes(p: &Plan) -> Vec<usize> {
    p.stages.iter().map(|s| s.index).collect()
}

#[test]
fn global_args_in_from() {
    let text =
        "ARG tag=nosuchtag\nFROM localhost:5000/busybox:${tag}\nRUN x\nFROM localhost:5000/busybox:${tag}\nARG tag\n";
    let p = ok(text, &[("tag", "latest")], None);
    assert_eq!(p.stages.len(), 1, "the first stage is not needed");
    assert_eq!(p.stages[0].base, BaseRef::Image("localhost:5000/busybox:latest".into()));
    assert_eq!(p.stages[0].args_in_scope.get("tag"), Some(&Some("latest".into())));
    assert!(p.unused_build_args.is_empty());
    let p = ok(text, &[], None);
    assert_eq!(
        p.stages[0].base,
        BaseRef::Image("localhost:5000/busybox:nosuchtag".into())
    );

    let text = "ARG a1=\"foo bar\" a2=box\nARG a3=\"$a2-foo\"\nFROM localhost:5000/busy$a2:latest AS build\nARG a3 a4=\"123 456\" a1\n";
    let p = ok(text, &[], None);
    assert_eq!(p.stages[0].base, BaseRef::Image("localhost:5000/busybox:latest".into()));
    assert_eq!(p.global_args["a3"], "box-foo");
    assert_eq!(p.global_args["a1"], "foo bar");
    let a = &p.stages[0].args_in_scope;
    assert_eq!(a["a3"], Some("box-foo".into()));
    assert_eq!(a["a4"], Some("\"123 456\"".into()), "raw default");
    assert_eq!(a["a1"], Some("foo bar".into()));
}

#[test]
fn required_global_arg() {
    let e = format!(
        "{:#}",
        plan_with("ARG FOO=${FOO:?\"custom error\"}\nFROM busybox\n", &[], None).unwrap_err()
    );
    assert!(
        e.starts_with("Dockerfile:1:1: failed to process") && e.contains("FOO: custom error"),
        "{e}"
    );
    ok(
        "ARG FOO=${FOO:?\"custom error\"}\nFROM busybox\n",
        &[("FOO", "given")],
        None,
    );
    let e = format!("{:#}", plan_with("ARG X=\nFROM ${X}\n", &[], None).unwrap_err());
    assert!(e.contains("base name (${X}) should not be blank"), "{e}");
}

#[test]
fn targets_and_pruning() {
    let text = "FROM b AS STAge0\nCOPY foo bar\nFROM b AS staGE1\nCOPY --from=staGE0 bar baz\nFROM b\nCOPY --from=stage1 baz bax\n";
    let p = ok(text, &[], Some("Stage1"));
    assert_eq!(p.target, 1);
    assert_eq!(indexes(&p), vec![0, 1]);
    assert_eq!(p.stages[1].deps, vec![0]);
    assert_eq!(p.target_stage().name.as_deref(), Some("stage1"));
    let e = format!("{:#}", plan_with(text, &[], Some("nope")).unwrap_err());
    assert!(
        e.contains("target stage \"nope\" could not be found") && e.contains("stage0, stage1"),
        "{e}"
    );

    let text = "FROM b\nRUN exit 1\nFROM b as one\nRUN x\nFROM b\nRUN exit 1\nFROM one\nCOPY --from=1 file copied\n";
    let p = ok(text, &[], None);
    assert_eq!(indexes(&p), vec![1, 3]);
    assert_eq!(p.all_stages.len(), 4);
    assert!(p.all_stages.iter().enumerate().all(|(i, s)| s.index == i));
    assert!(p.stage(0).is_none() && p.all_stages[0].instructions.len() == 1);
    assert_eq!(p.stages[1].base, BaseRef::Stage(1));
    assert_eq!(p.stages[1].deps, vec![1]);

    let text =
        "FROM b\nRUN touch /1\nFROM b AS mytarget\nCOPY --from=0 hello .\nFROM b AS mytarget2\nCOPY --from=1 hello .\n";
    let p = ok(text, &[], Some("mytarget"));
    assert_eq!(indexes(&p), vec![0, 1]);
    assert_eq!(p.predefined_args["TARGETSTAGE"], "mytarget");
}

#[test]
fn stage_reference_errors() {
    let text = "FROM b AS target\nCOPY --from=build /d2 /out\nFROM b AS build\nCOPY d2 /d2\nFROM target\n";
    let e = format!("{:#}", plan_with(text, &[], None).unwrap_err());
    assert!(
        e.starts_with(
            "Dockerfile:2:1: cannot copy from stage \"build\", it needs to be defined before current stage \"target\""
        ),
        "{e}"
    );
    let e = format!("{:#}", plan_with("FROM b\nCOPY --from=0 a b\n", &[], None).unwrap_err());
    assert!(e.contains("cannot copy from stage \"stage-0\""), "self reference: {e}");
    let text = "FROM b AS a\nRUN x\nFROM scratch\nARG SRC=a\nCOPY --from=$SRC /from.txt /\n";
    let e = format!("{:#}", plan_with(text, &[], None).unwrap_err());
    assert!(
        e.contains("variable expansion is not supported for --from") && e.starts_with("Dockerfile:5:6: "),
        "{e}"
    );
    let e = format!(
        "{:#}",
        plan_with("FROM b\nFROM c\nCOPY --from=7 a b\n", &[], None).unwrap_err()
    );
    assert!(e.contains("invalid stage index 7"), "{e}");
    // an unknown name is an image reference
    let p = ok("FROM b AS foo\nCOPY --from=bar foo bar\n", &[], None);
    assert_eq!(p.stages[0].deps, Vec::<usize>::new());
    assert_eq!(copy_from_ref(&p, "bar"), BaseRef::Image("bar".into()));
    assert_eq!(copy_from_ref(&p, "FOO"), BaseRef::Stage(0));
    assert_eq!(copy_from_ref(&p, "0"), BaseRef::Stage(0));
    assert_eq!(
        copy_from_ref(&p, "localhost:5000/busybox:latest"),
        BaseRef::Image("localhost:5000/busybox:latest".into())
    );
    // FROM a later stage name is an image
    let p = ok("FROM later\nFROM b AS later\n", &[], Some("later"));
    assert_eq!(p.stages[0].base, BaseRef::Image("b".into()));
}

#[test]
fn mounts_and_onbuild_create_dependencies() {
    let text = "FROM b AS cache\nRUN x\nFROM b AS tool\nFROM b\nRUN --mount=type=bind,from=tool,target=/t --mount=type=cache,target=/c,from=cache true\n";
    let p = ok(text, &[], None);
    assert_eq!(p.stages.last().unwrap().deps, vec![0, 1]);
    assert_eq!(p.parallel_levels(), vec![vec![0, 1], vec![2]]);

    let text = "FROM b AS src\nRUN x\nFROM b AS base\nONBUILD COPY --from=src /in/file /out/foo\nFROM base AS mid\nRUN cp\nFROM scratch\nCOPY --from=mid /out/bar /\n";
    let p = ok(text, &[], None);
    assert_eq!(indexes(&p), vec![0, 1, 2, 3]);
    let mid = p.stage(2).unwrap();
    assert_eq!(mid.deps, vec![0, 1]);
    assert_eq!(mid.onbuild_triggers.len(), 1);
    assert_eq!(mid.onbuild_triggers[0].keyword(), "COPY");
    assert!(p.stage(1).unwrap().onbuild_triggers.is_empty());
}

#[test]
fn scratch_and_platform() {
    let p = ok("FROM --platform=$BUILDPLATFORM scratch AS s\n", &[], None);
    assert_eq!(p.stages[0].base, BaseRef::Scratch);
    assert_eq!(
        p.stages[0].platform.as_deref(),
        Some(p.predefined_args["BUILDPLATFORM"].as_str())
    );
    let o = BuildOptions {
        platform: Some("linux/aarch64".into()),
        ..Default::default()
    };
    let p = plan(&df("FROM --platform=$TARGETPLATFORM x\n"), &o).unwrap();
    assert_eq!(p.platform, "linux/arm64");
    assert_eq!(p.predefined_args["TARGETARCH"], "arm64");
    assert_eq!(p.predefined_args["TARGETVARIANT"], "");
    assert_eq!(p.stages[0].platform.as_deref(), Some("linux/arm64"));
    let p = ok("FROM x\n", &[("TARGETARCH", "riscv64")], None);
    assert_eq!(p.global_args["TARGETARCH"], "riscv64");
    assert!(p.unused_build_args.is_empty());
    assert_eq!(Platform::parse("arm").unwrap().to_string(), "linux/arm/v7");
    assert_eq!(Platform::parse("linux/arm64/v8").unwrap().to_string(), "linux/arm64");
    assert_eq!(Platform::parse("linux/x86_64").unwrap().to_string(), "linux/amd64");
    assert!(Platform::parse("a/b/c/d").is_err());
    let e = format!("{:#}", plan_with("FROM --platform=a/b/c/d x\n", &[], None).unwrap_err());
    assert!(e.starts_with("Dockerfile:1:1: invalid platform"), "{e}");
}

#[test]
fn proxies_and_unused_build_args() {
    let text = "FROM b\nARG FOO1=fromfile\nARG FOO2=fromfile\nARG FOO4=fromfile\nARG FOO5\nARG FOO6\n";
    let p = ok(
        text,
        &[
            ("FOO1", "fromcmd"),
            ("FOO2", ""),
            ("FOO5", "fromcmd"),
            ("FOO7", "fromcmd"),
            ("http_proxy", "hp"),
            ("NO_PROXY", "np"),
        ],
        None,
    );
    assert_eq!(p.unused_build_args, vec!["FOO7"]);
    assert_eq!(p.proxy_args.get("HTTP_PROXY").map(String::as_str), Some("hp"));
    assert_eq!(p.proxy_args.get("http_proxy").map(String::as_str), Some("hp"));
    assert_eq!(p.proxy_args.get("no_proxy").map(String::as_str), Some("np"));
    let mut scope = StageScope::new(&p, &["PATH=/bin".to_string()], &[]);
    for ins in &p.stages[0].instructions {
        scope.apply(ins).unwrap();
    }
    let env = scope.run_env();
    for want in [
        "PATH=/bin",
        "FOO1=fromcmd",
        "FOO2=",
        "FOO4=fromfile",
        "FOO5=fromcmd",
        "HTTP_PROXY=hp",
        "http_proxy=hp",
        "NO_PROXY=np",
    ] {
        assert!(env.contains(&want.to_string()), "{want} missing in {env:?}");
    }
    assert!(
        !env.iter().any(|e| e.starts_with("FOO6") || e.starts_with("FOO7")),
        "{env:?}"
    );
    assert_eq!(
        scope.config_env(),
        vec!["PATH=/bin"],
        "ARGs and proxies stay out of the image"
    );
}

fn run_scope(text: &str, build_args: &[(&str, &str)]) -> (Plan, StageScope) {
    let p = ok(text, build_args, None);
    let mut scope = StageScope::new(&p, &[], &[]);
    for ins in &p.target_stage().instructions {
        scope.apply(ins).unwrap();
    }
    (p, scope)
}

#[test]
fn arg_scope_rules() {
    // ENV before ARG wins
    let (_, s) = run_scope("FROM b\nENV foo barOverride\nARG foo\n", &[("foo", "bar")]);
    assert_eq!(s.word("$foo").unwrap(), "barOverride");
    assert!(s.run_env().contains(&"foo=barOverride".to_string()));
    assert!(!s.run_env().contains(&"foo=bar".to_string()));
    // ARG then ENV from it
    let (_, s) = run_scope("FROM b\nARG foo=bar\nENV foo $foo\n", &[("foo", "barOverride")]);
    assert_eq!(s.config_env(), vec!["foo=barOverride"]);
    // stage default beats the global, build-arg beats both, bare ARG takes the global
    let (_, s) = run_scope(
        "ARG FOO=header\nARG foo=0 bar=1\nFROM b\nARG FOO=stage\nARG foo=9\nARG bar\n",
        &[],
    );
    assert_eq!(s.word("$FOO $foo $bar").unwrap(), "stage 9 1");
    let (_, s) = run_scope("ARG foo=0\nFROM b\nARG foo=9\n", &[("foo", "cli")]);
    assert_eq!(s.word("$foo").unwrap(), "cli");
    // not visible before declaration; predefined only after ARG
    let p = ok("FROM b\nRUN x\nARG foo\nARG TARGETARCH\n", &[("foo", "bar")], None);
    let mut s = StageScope::new(&p, &[], &[]);
    assert_eq!(s.word("[$foo][$TARGETARCH]").unwrap(), "[][]");
    for ins in &p.stages[0].instructions {
        s.apply(ins).unwrap();
    }
    assert_eq!(s.word("[$foo]").unwrap(), "[bar]");
    assert_eq!(s.word("$TARGETARCH").unwrap(), p.predefined_args["TARGETARCH"]);
    // declared without value: unset
    let (_, s) = run_scope("FROM b\nARG nothing\n", &[]);
    assert_eq!(s.word("${nothing-unset}").unwrap(), "unset");
    assert!(!s.run_env().iter().any(|e| e.starts_with("nothing")));
    // ENV values are expanded against the scope before the instruction
    let (_, s) = run_scope("FROM b\nENV a=1\nENV a=2 b=$a\n", &[]);
    assert_eq!(s.config_env(), vec!["a=2", "b=1"]);
    // used_args for cache keys: ARGs only, not ENV
    let (_, s) = run_scope("FROM b\nARG x=1\nENV y=2\n", &[]);
    assert_eq!(s.used_args("$x $y"), vec![("x".to_string(), "1".to_string())]);
    // inheritance across stages
    let p = ok("FROM b AS one\nARG v=1\nFROM one\nRUN x\n", &[], None);
    assert_eq!(p.stages[1].args_in_scope.get("v"), Some(&Some("1".into())));
    let mut s1 = StageScope::new(&p, &[], &[]);
    s1.apply(&p.stages[0].instructions[0]).unwrap();
    let s2 = StageScope::new(&p, &[], s1.args());
    assert_eq!(s2.word("$v").unwrap(), "1");
    // an error in a default is located
    let p = ok("FROM b\nARG x=${y:?\"need y\"}\n", &[], None);
    let mut s = StageScope::new(&p, &[], &[]);
    let e = format!("{:#}", s.apply(&p.stages[0].instructions[0]).unwrap_err());
    assert!(
        e.starts_with("Dockerfile:2:1: failed to process") && e.contains("y: need y"),
        "{e}"
    );
}

#[test]
fn arg_value_helper() {
    let p = ok("ARG g=global\nFROM b\nARG g\nARG d=def\n", &[("cli", "c")], None);
    let none = BTreeMap::new();
    assert_eq!(p.arg_value(0, "g", &none).as_deref(), Some("global"));
    assert_eq!(p.arg_value(0, "d", &none), None);
    assert_eq!(p.arg_value(0, "cli", &none).as_deref(), Some("c"));
    assert_eq!(p.arg_value(0, "undeclared", &none), None);
}

#[test]
fn render_shows_expanded_steps() {
    let p = ok(
        "ARG v=1.0\nFROM busybox:$v AS build\nARG d=/opt\nWORKDIR $d/app\nCOPY --chown=$d a $d/\nFROM scratch\nCOPY --from=build /x /\n",
        &[],
        None,
    );
    let r = p.render();
    assert!(r.contains("FROM busybox:1.0"), "{r}");
    assert!(r.contains("=> WORKDIR /opt/app"), "{r}");
    assert!(r.contains("=> COPY --chown=/opt a /opt/"), "{r}");
    assert!(r.contains("needs [0] [target]"), "{r}");
}

/// Every Dockerfile of the shared conformance corpus parses and plans, or fails with the
/// message its `expect` asks for. Skipped when the corpus is absent.
#[test]
fn conformance_corpus() {
    let root = std::path::Path::new("/work/shared/conformance/cases");
    let Ok(entries) = std::fs::read_dir(root) else {
        eprintln!("conformance corpus not present; skipping");
        return;
    };
    let mut names: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("Dockerfile").exists())
        .collect();
    names.sort();
    // failures the frontend itself must report (the others fail while building)
    let frontend_errors = [
        "error-copy-from-variable",
        "error-invalid-chmod",
        "error-missing-arguments",
        "error-required-global-arg",
        "error-stage-used-before-definition",
        "ignore-bad-exclusion",
    ];
    let mut report = Vec::new();
    let mut problems = Vec::new();
    for case in &names {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let expect = std::fs::read_to_string(case.join("expect")).unwrap_or_default();
        let mut build_args = BTreeMap::new();
        let mut target = None;
        let mut fails = false;
        let mut stderr: Vec<String> = Vec::new();
        for line in expect.lines() {
            if let Some(kv) = line.strip_prefix("build-arg ") {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                build_args.insert(k.to_string(), v.to_string());
            } else if let Some(t) = line.strip_prefix("target ") {
                target = Some(t.trim().to_string());
            } else if line.trim() == "build fails" {
                fails = true;
            } else if let Some(s) = line.strip_prefix("stderr contains ") {
                stderr.push(s.to_lowercase());
            }
        }
        let bytes = std::fs::read(case.join("Dockerfile")).unwrap();
        let outcome = dockerfile::parse_bytes(&bytes, "Dockerfile")
            .and_then(|d| {
                plan(
                    &d,
                    &BuildOptions {
                        build_args,
                        target,
                        platform: None,
                    },
                )
            })
            .and_then(|p| {
                dockerfile::IgnoreMatcher::load(&case.join("context"), &case.join("Dockerfile"))?;
                Ok(p)
            });
        let must_fail_here = frontend_errors.contains(&name.as_str());
        match (outcome, fails) {
            (Ok(p), false) => report.push(format!("ok     {name} ({} stage(s))", p.stages.len())),
            (Ok(_), true) if !must_fail_here => {
                report.push(format!("ok     {name} (parses; fails later while building)"))
            }
            (Ok(_), true) => problems.push(format!("{name}: expected a frontend error, got a plan")),
            (Err(e), true) => {
                let msg = format!("{e:#}");
                if stderr.iter().all(|s| msg.to_lowercase().contains(s)) {
                    report.push(format!("error  {name}: {msg}"));
                } else {
                    problems.push(format!("{name}: error {msg:?} lacks {stderr:?}"));
                }
            }
            (Err(e), false) => problems.push(format!("{name}: {e:#}")),
        }
    }
    for r in &report {
        eprintln!("{r}");
    }
    assert!(problems.is_empty(), "conformance problems:\n{}", problems.join("\n"));
    assert!(names.len() >= 90, "expected the 98 cases, found {}", names.len());
}

fn decode_expect_text(s: &str) -> String {
    let mut out = String::new();
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('s') => out.push(' '),
            Some('\\') => out.push('\\'),
            Some('x') => {
                let h: String = it.by_ref().take(2).collect();
                out.push(u8::from_str_radix(&h, 16).unwrap_or(b'?') as char);
            }
            Some(o) => {
                out.push('\\');
                out.push(o);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// For the corpus cases whose target stage starts from an image, expand ENV and LABEL the way
/// the executor will (StageScope) and compare with the case's `config Env.K == V` and
/// `config Labels.K == V` assertions.
#[test]
fn conformance_env_and_label_values() {
    let root = std::path::Path::new("/work/shared/conformance/cases");
    let Ok(entries) = std::fs::read_dir(root) else { return };
    let mut checked = 0;
    let mut problems = Vec::new();
    for case in entries.flatten().map(|e| e.path()) {
        let Ok(expect) = std::fs::read_to_string(case.join("expect")) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(case.join("Dockerfile")) else {
            continue;
        };
        if expect.lines().any(|l| l.trim() == "build fails") {
            continue;
        }
        let mut build_args = Vec::new();
        let mut target = None;
        for line in expect.lines() {
            if let Some(kv) = line.strip_prefix("build-arg ") {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                build_args.push((k.to_string(), v.to_string()));
            } else if let Some(t) = line.strip_prefix("target ") {
                target = Some(t.trim().to_string());
            }
        }
        let ba: Vec<(&str, &str)> = build_args.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let p = ok(&text, &ba, target.as_deref());
        let st = p.target_stage();
        if matches!(st.base, BaseRef::Stage(_)) {
            continue;
        }
        let base_env = vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()];
        let mut scope = StageScope::new(&p, &base_env, &[]);
        let mut labels = BTreeMap::new();
        for ins in &st.instructions {
            scope.apply(ins).unwrap();
            if let Command::Label(kvs) = &ins.command {
                for (k, v) in kvs {
                    labels.insert(scope.word(k).unwrap(), scope.word(v).unwrap());
                }
            }
        }
        let env: BTreeMap<String, String> = scope
            .config_env()
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for line in expect.lines() {
            let Some(rest) = line.strip_prefix("config ") else {
                continue;
            };
            let Some((lhs, want)) = rest.split_once(" == ") else {
                continue;
            };
            let (map, key) = if let Some(k) = lhs.strip_prefix("Env.") {
                (&env, k)
            } else if let Some(k) = lhs.strip_prefix("Labels.") {
                (&labels, k)
            } else {
                continue;
            };
            let Some(got) = map.get(key) else { continue };
            checked += 1;
            let want = decode_expect_text(want);
            if *got != want {
                problems.push(format!("{}: {lhs}: got {got:?}, want {want:?}", case.display()));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    eprintln!("checked {checked} ENV/LABEL values");
}

/// Random Dockerfiles from instruction-shaped pieces (deterministic xorshift): whatever parses
/// must plan or fail cleanly, never panic. Moved here from the parser's tests: the parser is
/// below the planner and must not import it.
fn plan_random_dockerfiles(mut seed: u64, rounds: usize) {
    let pieces = [
        "FROM ",
        "RUN ",
        "COPY ",
        "ADD ",
        "ENV ",
        "ARG ",
        "ONBUILD ",
        "LABEL ",
        "WORKDIR ",
        "USER ",
        "CMD ",
        "AS ",
        "--from=",
        "--platform=",
        "--mount=",
        "type=cache",
        "type=bind,from=",
        "target=/x",
        "scratch",
        "alpine",
        "a",
        "b",
        "0",
        "1",
        "${",
        "}",
        "$",
        ":-",
        ":+",
        "=",
        " ",
        "\n",
        "\\\n",
        "\"",
        "[",
        "]",
        ",",
        "#",
        "# escape=`\n",
        "$TARGETPLATFORM",
        "$BUILDPLATFORM",
        "\0",
        "é",
    ];
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let opts = BuildOptions::default();
    for _ in 0..rounds {
        let n = (next() % 40) as usize;
        let text: String = (0..n)
            .map(|_| pieces[(next() % pieces.len() as u64) as usize])
            .collect();
        if let Ok(df) = parse(&text, "Dockerfile") {
            let _ = plan(&df, &opts).map(|p| p.render());
        }
    }
}

#[test]
fn random_dockerfiles_never_panic_the_planner() {
    plan_random_dockerfiles(0x9E37_79B9_7F4A_7C15, 3000);
}
