//! Parse-speed benchmark: `cargo run --release --example parse_bench [instructions]`.
//! Generates a Dockerfile with 10,000 instructions of every kind (continuations, heredocs,
//! JSON forms, flags) and reports the best and median time of parsing and of planning it.

use std::time::{Duration, Instant};

fn generate(n: usize) -> String {
    let mut s = String::from("# syntax=docker/dockerfile:1\nARG BASE=busybox\nFROM ${BASE} AS build\n");
    let mut i = 0;
    while i < n {
        let line = match i % 12 {
            0 => format!("RUN echo step {i} && \\\n    ls -la /tmp > /dev/null\n"),
            1 => format!("ENV K{i}=\"value {i}\" OTHER{i}=x\\ y\n"),
            2 => format!("COPY --chown=1000:1000 --chmod=0644 src/file{i}.txt /app/dir{i}/\n"),
            3 => format!("LABEL org.example.l{i}=\"label {i}\"\n"),
            4 => format!("ARG A{i}=${{K{}:-default}}\n", i.saturating_sub(3)),
            5 => "RUN [\"/bin/sh\", \"-c\", \"echo exec form\"]\n".to_string(),
            6 => format!("WORKDIR /work/{i}\n"),
            7 => format!("RUN --mount=type=cache,target=/root/.cache/{i} <<EOF\necho heredoc {i}\nEOF\n"),
            8 => format!("EXPOSE {}/tcp\n", 1000 + i % 5000),
            9 => format!("ADD --link https://example.com/f{i}.tar.gz /opt/\n"),
            10 => "USER 1000:1000\n".to_string(),
            _ => format!("# a comment {i}\nHEALTHCHECK --interval=30s CMD curl -f http://localhost/{i}\n"),
        };
        s.push_str(&line);
        i += 1;
    }
    s.push_str("FROM scratch\nCOPY --from=build /app /app\n");
    s
}

fn stats(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[0], v[v.len() / 2])
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let text = generate(n);
    let lines = text.lines().count();
    let mut parse_times = Vec::new();
    let mut plan_times = Vec::new();
    for _ in 0..15 {
        let t = Instant::now();
        let df = kiln::dockerfile::parse(&text, "Dockerfile").expect("benchmark Dockerfile parses");
        parse_times.push(t.elapsed());
        let t = Instant::now();
        let plan = kiln::plan::plan(&df, &kiln::plan::BuildOptions::default()).expect("benchmark Dockerfile plans");
        plan_times.push(t.elapsed());
        assert_eq!(df.instructions.len(), n + 4);
        assert_eq!(plan.stages.len(), 2);
    }
    let (pb, pm) = stats(parse_times);
    let (lb, lm) = stats(plan_times);
    println!("{n} instructions, {lines} lines, {} KiB", text.len() / 1024);
    println!("parse: best {pb:?}, median {pm:?}");
    println!("plan:  best {lb:?}, median {lm:?}");
}
