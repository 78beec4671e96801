//! Tests of the shell-word expansion (expand.rs).

use super::*;

fn env() -> BTreeMap<String, String> {
    [
        ("a", "hello"),
        ("e", ""),
        ("PWD", "/home"),
        ("path", "/usr/local/bin/app.tar.gz"),
        ("sp", "  x   y "),
        ("foo", "zzz"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn w(s: &str) -> String {
    process_word(s, &env(), '\\').unwrap_or_else(|e| format!("ERR {e}"))
}

#[test]
fn substitutions_table() {
    let cases: &[(&str, &str)] = &[
        ("$a", "hello"),
        ("${a}", "hello"),
        ("x${a}y", "xhelloy"),
        ("$a$a", "hellohello"),
        ("${u:-w}", "w"),
        ("${e:-w}", "w"),
        ("${a:-w}", "hello"),
        ("${u-w}", "w"),
        ("${e-w}", ""),
        ("${a-w}", "hello"),
        ("${u:+w}", ""),
        ("${e:+w}", ""),
        ("${a:+w}", "w"),
        ("${u+w}", ""),
        ("${e+w}", "w"),
        ("${a+w}", "w"),
        ("${a:?m}", "hello"),
        ("${e?m}", ""),
        ("${path#*/}", "usr/local/bin/app.tar.gz"),
        ("${path##*/}", "app.tar.gz"),
        ("${path%.*}", "/usr/local/bin/app.tar"),
        ("${path%%.*}", "/usr/local/bin/app"),
        ("${path#nomatch}", "/usr/local/bin/app.tar.gz"),
        ("${a/l/L}", "heLlo"),
        ("${a//l/L}", "heLLo"),
        ("${a/l*/X}", "heX"),
        ("${a//?/_}", "_____"),
        ("${a/x/y}", "hello"),
        ("${u/x/y}", ""),
        ("${u:-${a}}", "hello"),
        ("${u:-${v:-deep}}", "deep"),
        ("${u:-\"q w\"}", "q w"),
        ("$", "$"),
        ("$.", "$."),
        ("a$", "a$"),
        ("he$1x", "hex"),
        ("a$$b", "ab"),
        ("\\$a", "$a"),
        ("\\${}", "${}"),
        ("'$a'", "$a"),
        ("\"$a\"", "hello"),
        ("\"\\$a\"", "$a"),
        ("\"a\\tb\"", "a\\tb"),
        ("a\\tb", "atb"),
        ("he'll'o", "hello"),
        ("he\\'llo", "he'llo"),
        ("'hello\\'", "hello\\"),
        ("\"he'$PWD'\"", "he'/home'"),
        ("he\\\\$PWD", "he\\/home"),
        ("\"''\"", "''"),
        ("'\"hello\"'", "\"hello\""),
        ("value\\ value2", "value value2"),
        ("trailing\\", "trailing"),
        ("$sp", "  x   y "),
    ];
    for (input, want) in cases {
        assert_eq!(&w(input), want, "input {input:?}");
    }
}

/// Behaviour vectors from BuildKit's shell lexer tests (patterns, escapes, empty parts).
#[test]
fn buildkit_pattern_vectors() {
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<&'a str>);
    let cases: &[Case] = &[
        (
            "${FOO#()[]{\\}^$.\\*\\?|\\\\}",
            &[("FOO", "()[]{}^$.*?|\\x")],
            Some("x"),
        ),
        ("${FOO%%\\**}", &[("FOO", "xx**")], Some("xx")),
        ("${FOO#*x*y}", &[("FOO", "xxyy")], Some("y")),
        ("${FOO#*}", &[("FOO", "xxyy")], Some("xxyy")),
        ("${FOO#$BAR}", &[("FOO", "xxyy"), ("BAR", "x")], Some("xyy")),
        ("${FOO#$BAR}", &[("FOO", "xxyy"), ("BAR", "")], Some("xxyy")),
        ("${FOO#}", &[("FOO", "xxyy")], Some("xxyy")),
        ("${FOO##*x}", &[("FOO", "xxyy")], Some("yy")),
        ("${FOO##}", &[("FOO", "xxyy")], Some("xxyy")),
        ("${FOO#?\\?}", &[("FOO", "???y")], Some("?y")),
        ("${ABC:-.}${FOO%x}${ABC:-.}", &[("FOO", "xxyy")], Some(".xxyy.")),
        ("${FOO%%\\**\\*}", &[("FOO", "a***yy*")], Some("a")),
        ("${FOO%}", &[("FOO", "xxyy")], Some("xxyy")),
        (
            "${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}",
            &[("FOO", "/foo*/*/*.txt"), ("NEEDLE", "\\*/")],
            Some("/foo.*/*.txt - /foo..*.txt"),
        ),
        (
            "${FOO/$NEEDLE/} - ${FOO//$NEEDLE/}",
            &[("FOO", "/tmp/tmp/bar.txt"), ("NEEDLE", "/tmp")],
            Some("/tmp/bar.txt - /bar.txt"),
        ),
        (
            "${FOO/$NEEDLE/$REPLACEMENT} - ${FOO//$NEEDLE/$REPLACEMENT}",
            &[("FOO", "/a/foo/b/c.txt"), ("NEEDLE", "/?/"), ("REPLACEMENT", "/")],
            Some("/foo/b/c.txt - /foo/c.txt"),
        ),
        (
            "${FOO/$N/$R}",
            &[("FOO", "http://google.de"), ("N", "http://"), ("R", "https://")],
            Some("https://google.de"),
        ),
        ("${FOO//\\//\\/}", &[("FOO", "/tmp/foo.txt")], Some("\\/tmp\\/foo.txt")),
        ("${FOO/$BAR/ww}", &[("FOO", "xxyy"), ("BAR", "")], Some("wwxxyy")),
        ("${FOO//ww}", &[("FOO", "xxyy")], None),
        ("${FOO//}", &[("FOO", "xxyy")], None),
        ("${FOO///}", &[("FOO", "xxyy")], Some("xxyy")),
        ("${FOO///}", &[], Some("")),
        ("${FOO=aaa}", &[("FOO", "xxx")], None),
        ("${FOO=}", &[], None),
        (
            "${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}",
            &[("FOO", "xxx"), ("BAR", "")],
            Some("xxx  ccc"),
        ),
        (
            "${FOO:-aaa} ${BAR:-bbb} ${BAZ:-ccc}",
            &[("FOO", "xxx"), ("BAR", "")],
            Some("xxx bbb ccc"),
        ),
        (
            "${FOO+aaa} ${BAR+bbb} ${BAZ+ccc}",
            &[("FOO", "xxx"), ("BAR", "")],
            Some("aaa bbb "),
        ),
        (
            "${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}",
            &[("FOO", "xxx"), ("BAR", "")],
            Some("aaa  "),
        ),
        ("${BAR?bbb}", &[("BAR", "")], Some("")),
        ("${BAR:?bbb}", &[("BAR", "")], None),
        ("${VAR:?message here$ARG}", &[("VAR", ""), ("ARG", "x")], None),
        (
            "something-${V}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tar.gz",
            &[
                ("V", "v1.2.3"),
                ("TARGETOS", "linux"),
                ("TARGETARCH", "arm"),
                ("TARGETVARIANT", "v7"),
            ],
            Some("something-v1.2.3.linux-arm-v7.tar.gz"),
        ),
    ];
    for (input, vars, want) in cases {
        let env: BTreeMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let got = process_word(input, &env, '\\');
        match want {
            Some(w) => assert_eq!(got.as_deref().map_err(|e| e.to_string()), Ok(*w), "{input}"),
            None => assert!(got.is_err(), "{input} should fail, got {got:?}"),
        }
    }
    let env: BTreeMap<String, String> = [("VAR".into(), "".into()), ("ARG".into(), "x".into())].into();
    let e = process_word("${VAR:?message here$ARG}", &env, '\\')
        .unwrap_err()
        .to_string();
    assert!(e.contains("message herex"), "{e}");
}

#[test]
fn substitution_errors() {
    for (input, msg) in [
        ("${}", "bad substitution"),
        ("${:a}", "bad substitution"),
        ("${{a}}", "bad substitution"),
        ("${a", "missing '}'"),
        ("${a:-x", "missing '}'"),
        ("${u:?custom}", "u: custom"),
        ("${u?}", "u: is not allowed to be unset"),
        ("${e:?}", "e: is not allowed to be empty"),
        ("${a!x}", "unsupported modifier (!)"),
        ("'open", "matching single-quote"),
        ("\"open", "matching double-quote"),
        ("${a/x", "missing '/'"),
        ("${a#\\q}", "invalid escape"),
    ] {
        let err = process_word(input, &env(), '\\').unwrap_err().to_string();
        assert!(err.contains(msg), "{input:?}: {err}");
        assert!(err.starts_with("failed to process"), "{err}");
    }
}

#[test]
fn backtick_escape() {
    assert_eq!(process_word("`$a", &env(), '`').unwrap(), "$a");
    assert_eq!(process_word("\\go", &env(), '`').unwrap(), "\\go");
    assert_eq!(process_word("\"a`\"b\"", &env(), '`').unwrap(), "a\"b");
}

#[test]
fn field_splitting() {
    let ws = |s: &str| process_words(s, &env(), '\\').unwrap();
    assert_eq!(ws("$sp"), vec!["x", "y"]);
    assert_eq!(ws("\"$sp\""), vec!["  x   y "]);
    assert_eq!(ws("a b  c"), vec!["a", "b", "c"]);
    assert_eq!(ws("a\\ b"), vec!["a b"]);
    assert_eq!(ws("'' x"), vec!["x"]);
    assert_eq!(ws("${a}/udp 80"), vec!["hello/udp", "80"]);
    assert!(ws("").is_empty());
}

#[test]
fn referenced() {
    let got = referenced_vars("$a ${b:-$c} ${d?x} $1 \\$e '$f' \"$g\"");
    assert_eq!(got, vec!["a", "c", "b", "d", "1", "g"]);
}

#[test]
fn matches_reported() {
    let r = process_word_with_matches("$a $nope ${foo}", &env(), '\\').unwrap();
    assert!(r.matched.contains("a") && r.matched.contains("foo"));
    assert!(r.unmatched.contains("nope"));
}

#[test]
fn heredoc_expansion_keeps_quotes() {
    let name: BTreeMap<String, String> = [("name".to_string(), "world".to_string())].into();
    assert_eq!(
        expand_heredoc("Hello '${name}'!\n", &name, '\\').unwrap(),
        "Hello 'world'!\n"
    );
    assert_eq!(
        expand_heredoc("Hello \"${name}\"!\n", &name, '\\').unwrap(),
        "Hello \"world\"!\n"
    );
    assert_eq!(expand_heredoc("a \\$name\n", &name, '`').unwrap(), "a $name\n");
}

#[test]
fn skip_unset_keeps_text() {
    let mut lex = Lex::new('\\');
    lex.skip_unset_env = true;
    assert_eq!(
        lex.process("$x ${y} ${z:-d} $a", &env()).unwrap().result,
        "$x ${y} ${z:-d} hello"
    );
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let s = "${a:-".repeat(5000) + &"}".repeat(5000);
    assert!(process_word(&s, &env(), '\\').is_err());
}

#[test]
fn varlookup_impls() {
    let v: Vec<String> = vec!["A=1".into(), "B".into(), "A=2".into()];
    assert_eq!(VarLookup::get(&v, "A").as_deref(), Some("2"));
    assert_eq!(VarLookup::get(&v, "B").as_deref(), Some(""));
    let p: Vec<(String, String)> = vec![("x".into(), "1".into())];
    assert_eq!(process_word("$x", &p, '\\').unwrap(), "1");
    let f = |n: &str| (n == "q").then(|| "Q".to_string());
    assert_eq!(process_word("$q$r", &f, '\\').unwrap(), "Q");
}
