//! Parser tests, written from the Dockerfile reference and BuildKit's parser behaviour.

use super::*;

fn p(text: &str) -> Dockerfile {
    match parse(text, "Dockerfile") {
        Ok(d) => d,
        Err(e) => panic!("parse failed: {e:#}\n{text}"),
    }
}

/// Parse `FROM x` + `line` and return the second instruction.
fn one(line: &str) -> Instruction {
    let df = p(&format!("FROM busybox\n{line}\n"));
    df.instructions[1].clone()
}

fn err(text: &str) -> String {
    match parse(text, "Dockerfile") {
        Ok(d) => panic!("expected an error for {text:?}, got {:?}", d.instructions),
        Err(e) => format!("{e:#}"),
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn run_cmd(cmd: ShellOrExec) -> Command {
    Command::Run(RunCommand {
        cmd,
        mounts: Vec::new(),
        network: None,
        security: None,
    })
}

fn from_cmd(image: &str, name: Option<&str>) -> FromCommand {
    FromCommand {
        image: image.into(),
        name: name.map(String::from),
        platform: None,
    }
}

/// The COPY/ADD flag of this name, as the typed command holds it.
fn copy_of(ins: &Instruction) -> &CopyCommand {
    match &ins.command {
        Command::Copy(c) | Command::Add(c) => c,
        other => panic!("not a COPY/ADD: {other:?}"),
    }
}

#[test]
fn every_instruction_and_form() {
    use Command as C;
    use ShellOrExec::*;
    let cases: Vec<(&str, Command)> = vec![
        ("RUN echo hi", run_cmd(Shell("echo hi".into()))),
        ("RUN [\"echo\", \"hi\"]", run_cmd(Exec(s(&["echo", "hi"])))),
        (
            "RUN [\"echo\", \"hello\"]this is invalid",
            run_cmd(Shell("[\"echo\", \"hello\"]this is invalid".into())),
        ),
        ("RUN [not json", run_cmd(Shell("[not json".into()))),
        ("run  lower   case", run_cmd(Shell("lower   case".into()))),
        (
            "CMD [\"/bin/echo\", \"Hello World\"]",
            C::Cmd(Exec(s(&["/bin/echo", "Hello World"]))),
        ),
        ("CMD echo $foo", C::Cmd(Shell("echo $foo".into()))),
        ("CMD []", C::Cmd(Exec(vec![]))),
        ("ENTRYPOINT [\"/bin/bash\"]", C::Entrypoint(Exec(s(&["/bin/bash"])))),
        ("ENTRYPOINT echo quux", C::Entrypoint(Shell("echo quux".into()))),
        (
            "SHELL [\"/bin/sh\", \"-e\", \"-c\"]",
            C::Shell(s(&["/bin/sh", "-e", "-c"])),
        ),
        (
            "LABEL a=b \"c d\"=\"e f\"",
            C::Label(vec![("a".into(), "b".into()), ("\"c d\"".into(), "\"e f\"".into())]),
        ),
        (
            "LABEL maintainer foo@bar.com",
            C::Label(vec![("maintainer".into(), "foo@bar.com".into())]),
        ),
        ("MAINTAINER Jane Doe <j@d>", C::Maintainer("Jane Doe <j@d>".into())),
        (
            "EXPOSE 80 80/tcp 53/udp 8000-8010 $P",
            C::Expose(s(&["80", "80/tcp", "53/udp", "8000-8010", "$P"])),
        ),
        ("ENV a b c", C::Env(vec![("a".into(), "b c".into())])),
        (
            "ENV a=1 b=\"x y\" c=z\\ w",
            C::Env(vec![
                ("a".into(), "1".into()),
                ("b".into(), "\"x y\"".into()),
                ("c".into(), "z\\ w".into()),
            ]),
        ),
        (
            "ADD a b /dest/",
            C::Add(CopyCommand {
                srcs: s(&["a", "b"]),
                dest: "/dest/".into(),
                ..Default::default()
            }),
        ),
        (
            "ADD [\"a b\", \"/d\"]",
            C::Add(CopyCommand {
                srcs: s(&["a b"]),
                dest: "/d".into(),
                ..Default::default()
            }),
        ),
        (
            "COPY ${baz} ${dot}",
            C::Copy(CopyCommand {
                srcs: s(&["${baz}"]),
                dest: "${dot}".into(),
                ..Default::default()
            }),
        ),
        (
            "COPY [\"with space\", \"/dest/\"]",
            C::Copy(CopyCommand {
                srcs: s(&["with space"]),
                dest: "/dest/".into(),
                ..Default::default()
            }),
        ),
        ("VOLUME /a /b", C::Volume(s(&["/a", "/b"]))),
        ("VOLUME [\"/a\", \"/b c\"]", C::Volume(s(&["/a", "/b c"]))),
        ("VOLUME $foo", C::Volume(s(&["$foo"]))),
        ("USER ${user}", C::User("${user}".into())),
        ("USER 1000:1000", C::User("1000:1000".into())),
        ("WORKDIR /w-${foo:-unset}", C::Workdir("/w-${foo:-unset}".into())),
        ("ARG a", C::Arg(vec![("a".into(), None)])),
        (
            "ARG a=1 b c=\"x y\"",
            C::Arg(vec![
                ("a".into(), Some("1".into())),
                ("b".into(), None),
                ("c".into(), Some("\"x y\"".into())),
            ]),
        ),
        ("ARG e=", C::Arg(vec![("e".into(), Some("".into()))])),
        ("STOPSIGNAL SIGKILL", C::Stopsignal("SIGKILL".into())),
        ("HEALTHCHECK NONE", C::Healthcheck(None)),
    ];
    for (line, want) in cases {
        let ins = one(line);
        assert_eq!(ins.command, want, "{line}");
        assert_eq!(ins.loc.line, 2, "{line}");
        assert_eq!(ins.original, line.trim(), "{line}");
    }
}

#[test]
fn keyword_is_upper_case_and_original_kept() {
    let ins = one("onbuild run touch /onbuild2");
    assert_eq!(ins.keyword(), "ONBUILD");
    let Command::Onbuild(t) = &ins.command else { panic!() };
    assert_eq!(t.keyword(), "RUN");
    assert_eq!(t.original, "run touch /onbuild2");
    assert_eq!(t.command, run_cmd(ShellOrExec::Shell("touch /onbuild2".into())));
}

#[test]
fn from_forms() {
    let df = p("FROM --platform=$BUILDPLATFORM golang:1.22 AS Build-1\nFROM scratch\nFROM x as y\n");
    let i = &df.instructions;
    assert_eq!(
        i[0].command,
        Command::From(FromCommand {
            platform: Some(FlagValue {
                raw: "$BUILDPLATFORM".into(),
                loc: Loc {
                    file: "Dockerfile".into(),
                    line: 1,
                    col: 6
                }
            }),
            ..from_cmd("golang:1.22", Some("build-1"))
        })
    );
    assert_eq!(i[1].command, Command::From(from_cmd("scratch", None)));
    assert_eq!(i[2].command, Command::From(from_cmd("x", Some("y"))));
    for bad in [
        "FROM x AS 1",
        "FROM x AS a/b",
        "FROM x AS -a",
        "FROM x AS",
        "FROM x y z",
        "FROM",
        "FROM a b",
    ] {
        let e = err(&format!("{bad}\n"));
        assert!(e.starts_with("Dockerfile:1:1: "), "{bad}: {e}");
        assert!(
            e.contains("FROM requires") || e.contains("invalid name for build stage"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn healthcheck_forms_and_flags() {
    let ins = one(
        "HEALTHCHECK --interval=5s --timeout=3s --start-period=1m30s --start-interval=500ms --retries=3 CMD /app/check.sh --quiet",
    );
    let Command::Healthcheck(Some(h)) = &ins.command else {
        panic!("{:?}", ins.command)
    };
    assert_eq!(h.test, ShellOrExec::Shell("/app/check.sh --quiet".into()));
    assert_eq!(h.test_vector(), s(&["CMD-SHELL", "/app/check.sh --quiet"]));
    assert_eq!(h.interval, Some(Duration::from_secs(5)));
    assert_eq!(h.timeout, Some(Duration::from_secs(3)));
    assert_eq!(h.start_period, Some(Duration::from_secs(90)));
    assert_eq!(h.start_interval, Some(Duration::from_millis(500)));
    assert_eq!(h.retries, Some(3));
    let ins = one("HEALTHCHECK --timeout=3s CMD [\"foo\"]");
    let Command::Healthcheck(Some(h)) = &ins.command else {
        panic!()
    };
    assert_eq!(h.test_vector(), s(&["CMD", "foo"]));
    assert_eq!(h.interval, None);
    for (line, msg) in [
        ("HEALTHCHECK", "requires at least one argument"),
        ("HEALTHCHECK NONE x", "takes no arguments"),
        ("HEALTHCHECK CMD", "Missing command"),
        ("HEALTHCHECK FOO bar", "Unknown type \"FOO\""),
        ("HEALTHCHECK --interval=5 CMD x", "invalid duration"),
        ("HEALTHCHECK --interval=1ns CMD x", "cannot be less than 1ms"),
        ("HEALTHCHECK --retries=-1 CMD x", "cannot be negative"),
        ("HEALTHCHECK --retries=x CMD x", "invalid number"),
        ("HEALTHCHECK --bogus=1 CMD x", "unknown flag: --bogus"),
    ] {
        let e = err(&format!("FROM a\n{line}\n"));
        assert!(e.contains(msg), "{line}: {e}");
        assert!(e.starts_with("Dockerfile:2:"), "{e}");
    }
}

#[test]
fn flags_accepted_where_they_belong() {
    let ok = [
        "COPY --from=build --chown=1:2 --chmod=0755 --link --parents --exclude=*.md --exclude=x a b",
        "COPY --link=false --chmod=u+x,go-w a b",
        "COPY --chmod=go=u-w,g=u a b",
        "ADD --chown=user --chmod=644 --link --keep-git-dir=true --checksum=sha256:abc --exclude=y --unpack a b",
        "RUN --mount=type=cache,target=/c --mount=type=bind,target=/s,from=0 --network=none --security=insecure true",
        "RUN --network=host --mount=type=secret,id=t true",
        "RUN --mount=type=bind,target=$DIR echo",
        "COPY --chmod=$MODE a b",
        "COPY --from=\"quoted stage\" a b",
    ];
    for line in ok {
        let mut ins = one(line);
        assert!(!ins.command.flag_locs_mut().is_empty(), "{line}");
    }
    let ins = one("COPY --from=build --exclude=a --exclude=b --link src dst");
    let c = copy_of(&ins);
    assert_eq!(c.from.as_ref().map(|f| f.raw.as_str()), Some("build"));
    let excludes: Vec<&str> = c.exclude.iter().map(|f| f.raw.as_str()).collect();
    assert_eq!(excludes, vec!["a", "b"]);
    assert!(c.link);
    assert!(!c.parents);
    assert!(!copy_of(&one("COPY --link=false a b")).link);
    assert!(copy_of(&one("COPY --link=TRUE a b")).link);
    assert_eq!(c.exclude[0].loc.col, 19, "flag columns point at the flag");
    assert_eq!(
        c.flags_for_key(),
        vec![
            ("from", Some("build")),
            ("link", None),
            ("exclude", Some("a")),
            ("exclude", Some("b"))
        ]
    );
    let ins = one("COPY --from=\"quoted stage\" a b");
    assert_eq!(
        copy_of(&one("COPY \"--from=x\" a b")).flags_for_key(),
        vec![],
        "a quoted word is not a flag"
    );
    assert_eq!(
        copy_of(&ins).from.as_ref().map(|f| f.raw.as_str()),
        Some("quoted stage")
    );
    let ins = one("COPY -- --not-a-flag b");
    assert!(copy_of(&ins).flags_for_key().is_empty());
    assert_eq!(
        ins.command,
        Command::Copy(CopyCommand {
            srcs: s(&["--not-a-flag"]),
            dest: "b".into(),
            ..Default::default()
        })
    );
}

#[test]
fn flags_rejected_on_the_wrong_instruction() {
    let cases = [
        (
            "RUN --chown=1 true",
            "flag --chown is not valid for RUN, only for COPY, ADD",
        ),
        ("RUN --from=x true", "only for COPY"),
        ("COPY --mount=type=cache,target=/x a b", "only for RUN"),
        ("ADD --mount=x a b", "only for RUN"),
        ("ADD --from=x a b", "only for COPY"),
        ("ADD --parents a b", "only for COPY"),
        ("COPY --checksum=sha256:x a b", "only for ADD"),
        ("COPY --keep-git-dir a b", "only for ADD"),
        ("RUN --link true", "only for COPY, ADD"),
        ("RUN --chmod=755 true", "only for COPY, ADD"),
        ("RUN --exclude=x true", "only for COPY, ADD"),
        ("RUN --platform=linux/amd64 true", "only for FROM"),
        ("COPY --platform=linux/amd64 a b", "only for FROM"),
        ("RUN --interval=5s true", "only for HEALTHCHECK"),
        ("COPY --network=none a b", "only for RUN"),
        ("COPY --security=insecure a b", "only for RUN"),
        ("ENV --x=1 a=b", "unknown flag: --x (ENV takes no flags)"),
        ("WORKDIR --chown=1 /x", "only for COPY, ADD"),
        (
            "RUN --bogus true",
            "unknown flag: --bogus (RUN accepts --mount, --network, --security)",
        ),
        ("COPY --from a b", "missing a value on flag: --from"),
        ("COPY --link= a b", "missing a value on flag: --link"),
        ("COPY --link=maybe a b", "expecting boolean value"),
        ("COPY --from=a --from=b x y", "duplicate flag specified: --from"),
        ("COPY --chmod=64a foo /", "64a"),
        ("COPY --chmod=99 foo /", "invalid --chmod"),
        ("RUN --network=bridge true", "unsupported network mode"),
        ("RUN --security=weird true", "unsupported security mode"),
        ("RUN --mount=type=nfs,target=/x true", "unsupported mount type"),
        ("RUN --mount=type=cache true", "has no target"),
    ];
    for (line, msg) in cases {
        let e = err(&format!("FROM a\n{line}\n"));
        assert!(e.contains(msg), "{line}: {e}");
        assert!(e.starts_with("Dockerfile:2:"), "{line}: {e}");
    }
    let e = err("FROM --from=x a\n");
    assert!(e.contains("only for COPY"), "{e}");
    let e = err("FROM a\nRUN   --chown=1 true\n");
    assert!(e.starts_with("Dockerfile:2:7: "), "flag errors point at the flag: {e}");
}

#[test]
fn argument_count_errors() {
    let cases = [
        ("ONBUILD", "ONBUILD requires at least one argument"),
        ("  ONBUILD", "ONBUILD requires at least one argument"),
        ("ONBUILD ONBUILD RUN x", "Chaining ONBUILD"),
        ("ONBUILD FROM x", "FROM isn't allowed as an ONBUILD trigger"),
        ("ONBUILD MAINTAINER x", "MAINTAINER isn't allowed"),
        ("ONBUILD FOO x", "unknown instruction: FOO"),
        ("ONBUILD RUN --chown=1 x", "not valid for RUN"),
        ("COPY onlyone", "COPY requires at least two arguments"),
        ("ADD onlyone", "ADD requires at least two arguments"),
        ("COPY a <<EOF", "cannot accept a heredoc as a destination"),
        ("ENV", "ENV requires at least one argument"),
        ("ENV onlyname", "ENV must have two arguments"),
        ("ENV a=1 b", "can't find = in \"b\""),
        ("ENV =x", "ENV names can not be blank"),
        ("LABEL", "LABEL requires at least one argument"),
        ("ARG", "ARG requires at least one argument"),
        ("ARG =x", "ARG names can not be blank"),
        ("EXPOSE", "EXPOSE requires at least one argument"),
        ("VOLUME", "VOLUME requires at least one argument"),
        ("VOLUME [\"\"]", "VOLUME specified can not be an empty string"),
        ("USER", "USER requires exactly one argument"),
        ("WORKDIR", "WORKDIR requires exactly one argument"),
        ("STOPSIGNAL", "STOPSIGNAL requires exactly one argument"),
        ("MAINTAINER", "MAINTAINER requires exactly one argument"),
        ("SHELL /bin/sh -c", "SHELL requires the arguments to be in JSON form"),
        ("SHELL []", "SHELL requires at least one argument"),
        ("RUN [\"a\", 1]", "arrays must be comprised of strings only"),
        ("CMD [\"a\", null]", "arrays must be comprised of strings only"),
    ];
    for (line, msg) in cases {
        let e = err(&format!("FROM a\n{line}\n"));
        assert!(e.contains(msg), "{line}: {e}");
        assert!(e.starts_with("Dockerfile:2:"), "{line}: {e}");
    }
}

#[test]
fn unknown_instruction() {
    let e = err("FROM a\nRUN x\nFOO bar\n");
    assert!(
        e.starts_with("Dockerfile:3:1: unknown instruction: FOO (expected one of FROM, RUN, CMD"),
        "{e}"
    );
    let e = err("FROM a\n  FORM b\n");
    assert!(
        e.starts_with("Dockerfile:2:3: unknown instruction: FORM (did you mean FROM? expected one of"),
        "{e}"
    );
}

#[test]
fn structure_errors() {
    assert!(err("").contains("Dockerfile:1:1: file with no instructions"));
    assert!(err("# only a comment\n\n").contains("file with no instructions"));
    let e = err("RUN x\nFROM a\n");
    assert!(e.starts_with("Dockerfile:1:1: RUN before the first FROM"), "{e}");
    let e = err("ARG a=1\nARG b\n");
    assert!(e.contains("no stages to build"), "{e}");
    assert_eq!(p("ARG a\nFROM x\n").instructions.len(), 2);
}

#[test]
fn binary_and_missing_files() {
    let e = format!(
        "{:#}",
        parse_bytes(b"FROM a\nRUN \x00\x01\n", "Dockerfile").unwrap_err()
    );
    assert!(e.starts_with("Dockerfile:2:5: the file contains a NUL byte"), "{e}");
    let e = format!("{:#}", parse_bytes(b"FROM a\n\xff\xfe\n", "Dockerfile").unwrap_err());
    assert!(e.starts_with("Dockerfile:2:1: the file is not valid UTF-8"), "{e}");
    let e = format!("{:#}", parse_file(Path::new("/nonexistent/Dockerfile")).unwrap_err());
    assert!(e.contains("Dockerfile not found: /nonexistent/Dockerfile"), "{e}");
    assert!(parse_bytes(b"FROM a\n", "D").is_ok());
}

#[test]
fn comments_continuations_and_whitespace() {
    let text = "FROM busybox\n# comment\nRUN echo hello\\\n  world\\\n  goodnight  \\\n  moon\\\n  light\\\nning > /o1\n\
                RUN echo hello  \\  \nworld > /o4\nRUN echo hi \\\n \\\n world \\\n\\\n good\\\n\\\nnight > /o5\n\
                RUN echo hello \\\n# this is a comment\n\n# this is a comment with a blank line surrounding it\n\nthis is some more useful stuff > /o7\n\
                # comment with line break \\\nRUN [ -x /hello.sh ]\n";
    let df = p(text);
    let runs: Vec<String> = df.instructions.iter().map(|i| i.original.clone()).collect();
    assert_eq!(runs[1], "RUN echo hello  world  goodnight    moon  lightning > /o1");
    assert_eq!(runs[2], "RUN echo hello  world > /o4");
    assert_eq!(runs[3], "RUN echo hi   world  goodnight > /o5");
    assert_eq!(runs[4], "RUN echo hello this is some more useful stuff > /o7");
    assert_eq!(runs[5], "RUN [ -x /hello.sh ]");
    assert_eq!(df.instructions[4].loc.line, 18);
    assert_eq!(df.instructions[4].end_line, 23);
    assert!(!df.warnings.is_empty(), "empty continuation lines warn");
    // a trailing escaped backslash is not a continuation
    let df = p("FROM a\nENV C trailing\\\\backslash\\\\\nENV D x\n");
    assert_eq!(df.instructions.len(), 3);
    assert_eq!(
        df.instructions[1].command,
        Command::Env(vec![("C".into(), "trailing\\\\backslash\\\\".into())])
    );
    // a continuation at end of file just ends
    let df = p("FROM a\nRUN echo \\");
    assert_eq!(df.instructions[1].original, "RUN echo");
    // CRLF line endings
    let df = p("FROM a\r\nRUN echo hi \\\r\n  there\r\n");
    assert_eq!(df.instructions[1].original, "RUN echo hi   there");
    // indentation gives the column
    let df = p("FROM a\n   RUN x\n\tCMD y\n");
    assert_eq!(df.instructions[1].loc.col, 4);
    assert_eq!(df.instructions[2].loc.col, 2);
    // BOM
    let df = p("\u{feff}FROM a\n");
    assert_eq!(df.instructions[0].loc.col, 1);
}

#[test]
fn directives() {
    let df = p(
        "# syntax=docker/dockerfile:1.7\n#escape = `\n# check=skip=all\nFROM a\nENV GOPATH `\n\\go\nRUN echo a `\n    b\n",
    );
    assert_eq!(df.directives.escape, '`');
    assert_eq!(df.directives.syntax.as_deref(), Some("docker/dockerfile:1.7"));
    assert_eq!(df.directives.check.as_deref(), Some("skip=all"));
    assert_eq!(
        df.instructions[1].command,
        Command::Env(vec![("GOPATH".into(), "\\go".into())])
    );
    assert_eq!(df.instructions[2].original, "RUN echo a     b");
    // a comment before the directive ends directive processing
    let df = p("# Comment here.\n# escape = `\n\nFROM a\nENV GOPATH \\\n\\go\n");
    assert_eq!(df.directives.escape, '\\');
    assert_eq!(
        df.instructions[1].command,
        Command::Env(vec![("GOPATH".into(), "\\go".into())])
    );
    // an empty line ends it too; unknown directives end it
    assert_eq!(p("\n# escape=`\nFROM a\n").directives.escape, '\\');
    assert_eq!(p("# foo=bar\n# escape=`\nFROM a\n").directives.escape, '\\');
    // errors
    assert!(err("# escape=x\nFROM a\n").contains("Dockerfile:1:1: invalid escape token 'x'"));
    assert!(err("# escape=`\n# escape=`\nFROM a\n").contains("only one escape parser directive"));
    for ok in [
        "docker/dockerfile:1",
        "docker/dockerfile:1.4",
        "docker.io/docker/dockerfile:1.7-labs",
        "docker/dockerfile",
        "docker/dockerfile:1@sha256:abc",
        "docker/dockerfile:experimental",
        "docker/dockerfile:1.0.0-experimental",
    ] {
        p(&format!("# syntax={ok}\nFROM a\n"));
    }
    let e = err("# syntax=example.com/frontend:2\nFROM a\n");
    assert!(e.starts_with("Dockerfile:1:1: unsupported frontend"), "{e}");
}

#[test]
fn heredocs() {
    let df = p(
        "FROM a\nRUN <<EOF\necho hi\n\techo tab\nEOF\nCOPY <<-EOT /dest\n\tindented\n\tEOT\nRUN 3<<'IN' cat <<\"X\" /dev/fd/3\nraw $x\nIN\nmore\nX\nCMD done\n",
    );
    let i = &df.instructions;
    assert_eq!(
        i[1].heredocs,
        vec![Heredoc {
            name: "EOF".into(),
            content: "echo hi\n\techo tab\n".into(),
            expand: true,
            strip_tabs: false,
            fd: 0
        }]
    );
    assert_eq!(i[1].command, run_cmd(ShellOrExec::Shell("<<EOF".into())));
    assert_eq!(i[1].end_line, 5);
    assert_eq!(i[2].heredocs[0].content, "indented\n");
    assert!(i[2].heredocs[0].strip_tabs);
    assert_eq!(
        i[2].command,
        Command::Copy(CopyCommand {
            srcs: s(&["<<-EOT"]),
            dest: "/dest".into(),
            ..Default::default()
        })
    );
    assert_eq!(i[2].heredoc_for("<<-EOT").map(|h| h.name.as_str()), Some("EOT"));
    assert_eq!(i[3].heredocs.len(), 2);
    assert_eq!(
        (
            i[3].heredocs[0].name.as_str(),
            i[3].heredocs[0].expand,
            i[3].heredocs[0].fd
        ),
        ("IN", false, 3)
    );
    assert_eq!((i[3].heredocs[1].name.as_str(), i[3].heredocs[1].expand), ("X", false));
    assert_eq!(i[3].heredocs[0].content, "raw $x\n");
    assert_eq!(i[4].keyword(), "CMD");
    assert_eq!(i[4].loc.line, 14);
    // several on one line, in order
    let df = p("FROM a\nRUN cat <<EOF1 | tr a b > ./out1; \\\n\tcat <<EOF2 > ./out2\nhello\nEOF1\nworld\nEOF2\n");
    let h = &df.instructions[1].heredocs;
    assert_eq!((h[0].name.as_str(), h[0].content.as_str()), ("EOF1", "hello\n"));
    assert_eq!((h[1].name.as_str(), h[1].content.as_str()), ("EOF2", "world\n"));
    // not heredocs: exec form, quoted, other instructions
    assert!(
        p("FROM a\nRUN [\"cat\", \"<<EOF\"]\n").instructions[1]
            .heredocs
            .is_empty()
    );
    assert!(p("FROM a\nRUN echo \"<<EOF\"\n").instructions[1].heredocs.is_empty());
    assert!(p("FROM a\nENV a=<<EOF\n").instructions[1].heredocs.is_empty());
    assert!(p("FROM a\nRUN echo $((1<<2))\n").instructions[1].heredocs.is_empty());
    // ONBUILD RUN <<EOF keeps the body in the trigger text
    let df = p("FROM a\nONBUILD RUN <<EOF\necho x\nEOF\n");
    let Command::Onbuild(t) = &df.instructions[1].command else {
        panic!()
    };
    assert_eq!(t.original, "RUN <<EOF\necho x\nEOF");
    assert_eq!(t.heredocs[0].content, "echo x\n");
    let again = parse_trigger(&t.original, '\\').unwrap();
    assert_eq!(again.heredocs[0].content, "echo x\n");
    // unterminated
    let e = err("FROM a\nRUN <<EOF\necho\n");
    assert!(e.starts_with("Dockerfile:2:1: unterminated heredoc <<EOF"), "{e}");
}

#[test]
fn heredoc_words() {
    assert_eq!(parse_heredoc_word("<<EOF"), Some(("EOF".into(), true, false, 0)));
    assert_eq!(parse_heredoc_word("<<-EOF"), Some(("EOF".into(), true, true, 0)));
    assert_eq!(parse_heredoc_word("<<'EOF'"), Some(("EOF".into(), false, false, 0)));
    assert_eq!(parse_heredoc_word("<<\"EOF\""), Some(("EOF".into(), false, false, 0)));
    assert_eq!(parse_heredoc_word("<<E\"O\"F"), Some(("EOF".into(), false, false, 0)));
    assert_eq!(parse_heredoc_word("12<<EOF"), Some(("EOF".into(), true, false, 12)));
    for no in ["<<", "<<-", "<EOF", "a<<EOF", "<<a<b", "<<\"a b\" x", "file"] {
        assert_eq!(parse_heredoc_word(no), None, "{no}");
    }
}

#[test]
fn onbuild_triggers() {
    let df = p("FROM a\nONBUILD COPY --from=src /in/file /out/foo\nONBUILD CMD [\"hello world\"]\n");
    let Command::Onbuild(t) = &df.instructions[1].command else {
        panic!()
    };
    let from = copy_of(t).from.clone().unwrap();
    assert_eq!(from.raw, "src");
    assert_eq!(t.loc.line, 2);
    assert_eq!(t.loc.col, 9);
    assert_eq!(from.loc.col, 14);
    assert_eq!(t.original, "COPY --from=src /in/file /out/foo");
    let t = parse_trigger("RUN touch /onbuild1", '\\').unwrap();
    assert_eq!(t.command, run_cmd(ShellOrExec::Shell("touch /onbuild1".into())));
    assert!(parse_trigger("FROM x", '\\').is_err());
    assert!(parse_trigger("RUN a\nRUN b", '\\').is_err());
    let loc = Loc {
        file: "Dockerfile".into(),
        line: 7,
        col: 1,
    };
    let t = parse_onbuild_trigger("RUN x", &loc).unwrap();
    assert_eq!(t.loc, loc);
    let e = format!("{:#}", parse_onbuild_trigger("BOGUS x", &loc).unwrap_err());
    assert!(e.starts_with("Dockerfile:7:1: ONBUILD trigger"), "{e}");
}

#[test]
fn env_and_label_words_keep_quotes_for_later_expansion() {
    let ins = one("ENV n7=\"value'quote space'value2\" n9=value\\ value2 n12=\"a\\'b\"");
    let Command::Env(kvs) = &ins.command else { panic!() };
    let vals: Vec<String> = kvs
        .iter()
        .map(|(_, v)| process_word(v, &expand::NoVars, '\\').unwrap())
        .collect();
    assert_eq!(vals, s(&["value'quote space'value2", "value value2", "a\\'b"]));
    // multi-line values through continuations
    let df =
        p("FROM a\nENV n15=value \\\n    n17=\"value2a \\\n           value2b\" \\\n    n19=\"value4a\\\\nvalue4b\"\n");
    let Command::Env(kvs) = &df.instructions[1].command else {
        panic!()
    };
    let vals: Vec<String> = kvs
        .iter()
        .map(|(_, v)| process_word(v, &expand::NoVars, '\\').unwrap())
        .collect();
    assert_eq!(vals, s(&["value", "value2a            value2b", "value4a\\nvalue4b"]));
}

#[test]
fn go_durations() {
    for (i, o) in [
        ("5s", 5000),
        ("1m30s", 90000),
        ("500ms", 500),
        ("1h", 3_600_000),
        ("1.5s", 1500),
        ("0", 0),
    ] {
        assert_eq!(parse_go_duration(i).unwrap().as_millis(), o, "{i}");
    }
    assert_eq!(parse_go_duration("10us").unwrap(), Duration::from_micros(10));
    for bad in ["", "5", "s", "5x", "-5s", "1..2s"] {
        assert!(parse_go_duration(bad).is_err(), "{bad}");
    }
}

#[test]
fn hundred_thousand_lines_parse_fast_without_recursion() {
    let mut text = String::from("FROM scratch\n");
    for i in 0..50_000 {
        text.push_str(&format!("ENV V{i}=value{i} \\\n    W{i}=\"x y\"\n"));
    }
    let start = std::time::Instant::now();
    let df = p(&text);
    assert_eq!(df.instructions.len(), 50_001);
    // generous bound for unoptimised test builds on a shared machine
    assert!(start.elapsed().as_secs() < 20, "took {:?}", start.elapsed());
    // one 100,000-line instruction (continuations) and a deep nesting in a word
    let mut long = String::from("FROM scratch\nRUN echo \\\n");
    for _ in 0..100_000 {
        long.push_str("  a \\\n");
    }
    long.push_str("  end\n");
    assert_eq!(p(&long).instructions.len(), 2);
}

/// Deterministic pseudo-random input (xorshift) for panic smoke tests.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn random_rounds(seed: u64, rounds: usize) {
    let alphabet: Vec<&str> = vec![
        "FROM ",
        "RUN ",
        "COPY ",
        "ADD ",
        "ENV ",
        "ARG ",
        "ONBUILD ",
        "HEALTHCHECK ",
        "LABEL ",
        "SHELL ",
        "EXPOSE ",
        "--from=",
        "--mount=",
        "--chmod=",
        "--interval=",
        "<<",
        "<<-",
        "EOF",
        "'",
        "\"",
        "\\",
        "`",
        "$",
        "{",
        "}",
        ":",
        "-",
        "+",
        "?",
        "#",
        "%",
        "/",
        "*",
        "[",
        "]",
        "^",
        ",",
        "=",
        " ",
        "\t",
        "\n",
        "\r\n",
        "\\\n",
        "# escape=`\n",
        "a",
        "é",
        "\u{feff}",
        "0",
        "9",
        "AS ",
        "NONE",
        "CMD ",
        "type=cache",
        "\0",
        "!",
        "**",
    ];
    let mut rng = Rng(seed);
    let env: std::collections::BTreeMap<String, String> = [("a".to_string(), "x y".to_string())].into();
    for _ in 0..rounds {
        let n = (rng.next() % 40) as usize;
        let mut text = String::new();
        for _ in 0..n {
            text.push_str(alphabet[(rng.next() % alphabet.len() as u64) as usize]);
        }
        // (Planning random Dockerfiles is plan's test: plan sits above the parser.)
        let _ = parse(&text, "Dockerfile");
        let _ = parse_bytes(text.as_bytes(), "Dockerfile");
        let _ = parse_trigger(&text, '\\');
        let _ = process_word(&text, &env, '\\');
        let _ = process_words(&text, &env, '`');
        let _ = expand::expand_heredoc(&text, &env, '\\');
        let _ = referenced_vars(&text);
        let _ = IgnoreMatcher::new(&text).map(|m| (m.is_excluded(&text), m.may_include_below(&text)));
        let _ = go_match(&text, "abc/def");
        let _ = go_match("*[a-z]?", &text);
        let _ = mount::parse_mount(&text);
        let _ = Chmod::parse(&text).map(|c| c.apply(0o644, false));
        let _ = parse_go_duration(&text);
        // and raw bytes
        let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        let _ = parse_bytes(&bytes, "Dockerfile");
    }
}

#[test]
fn random_input_never_panics() {
    random_rounds(0x9E37_79B9_7F4A_7C15, 3000);
}

/// Long soak: `KILN_SOAK_ITERS=2000000 cargo test --lib random_input_soak -- --ignored`.
#[test]
#[ignore]
fn random_input_soak() {
    let iters: usize = std::env::var("KILN_SOAK_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    eprintln!("soak seed {seed:#x}, {iters} rounds");
    random_rounds(seed, iters);
}

/// BuildKit's shell lexer vectors (envVarTest and wordsTest), every Unix case.
#[test]
fn buildkit_lexer_vectors() {
    use std::collections::BTreeMap;
    let data = include_str!("testdata/lexer_vectors.tsv");
    let mut section = "";
    let word_env: BTreeMap<String, String> = [("PWD", "/home"), ("SHELL", "bash"), ("KOREAN", "한국어"), ("NULL", "")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut words_env: BTreeMap<String, String> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut n = 0;
    for line in data.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if line.starts_with('[') {
            section = line;
            continue;
        }
        let (input, want) = line.split_once('\t').expect("INPUT<TAB>RESULT");
        if section == "[words]" && input == "ENV" {
            let (k, v) = want.split_once('=').expect("ENV k=v");
            words_env.insert(k.to_string(), v.to_string());
            continue;
        }
        n += 1;
        let got = if section == "[word]" {
            expand::process_word(input, &word_env, '\\').map_err(|e| e.to_string())
        } else {
            expand::process_words(input, &words_env, '\\')
                .map(|v| v.join(","))
                .map_err(|e| e.to_string())
        };
        match (&got, want) {
            (Err(_), "error") => {}
            (Ok(g), w) if g == w => {}
            _ => failures.push(format!("{section} {input:?}: got {got:?}, want {want:?}")),
        }
    }
    assert!(n > 200, "only {n} vectors read");
    assert!(
        failures.is_empty(),
        "{} of {n} vectors differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
