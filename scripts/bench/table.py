#!/usr/bin/env python3
"""table.py RAW.tsv [--meta TEXT] [--doc FILE] — the Markdown table of a scripts/bench.sh run.

RAW rows (tab-separated): workload, builder (kiln|buildah|floor), phase (a floor's name for
floors), run, load, wall s, cpu s, peak RSS KB, exit status. Without --doc the table goes to
stdout; with --doc it replaces the text between the bench markers of FILE (created if missing),
so the hand-written analysis around it survives a re-run.
"""
import argparse
import statistics as st

# issue 8 targets: kiln median / Buildah median, same machine, same run
TARGETS = {
    ("copy-big", "cold"): 0.20,
    ("run-many-files", "cold"): 0.45,
    ("many-steps", "cold"): 0.10,
    ("cached-rebuild", "nochange"): 0.05,
    ("multi-stage", "cold"): 0.50,
    ("push", "push"): 0.50,
}
RSS_TARGET_MB = 100
PHASES = ["cold", "build", "push", "nochange", "touch", "edit", "noop", "run-true"]
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def load(path):
    rows = {}
    order = []
    for line in open(path):
        f = line.rstrip("\n").split("\t")
        if len(f) != 9:
            continue
        w, v, ph, n, load, wall, cpu, rss, rc = f
        if ph == "warmup":
            continue
        if w not in order:
            order.append(w)
        try:
            load = float(load)
        except ValueError:
            load = float("nan")
        rows.setdefault((w, ph, v), []).append((float(wall), float(cpu), int(rss or 0), int(rc), load))
    return rows, order


def fmt_runs(rs):
    ok = [r for r in rs if r[3] == 0]
    if not rs:
        return None, "—"
    if not ok:
        return None, "FAILED (%d/%d)" % (len(rs) - len(ok), len(rs))
    walls = [r[0] for r in ok]
    med = st.median(walls)
    text = "%.2f" % med if len(walls) == 1 else "%.2f (%.2f–%.2f)" % (med, min(walls), max(walls))
    if len(ok) < len(rs):
        text += " [%d failed]" % (len(rs) - len(ok))
    return med, text


def cpu_rss(rs):
    ok = [r for r in rs if r[3] == 0]
    if not ok:
        return "—", "—"
    return "%.2f" % st.median(r[1] for r in ok), "%.0f" % (max(r[2] for r in ok) / 1024)


def table(rows, order):
    out = []
    out.append("| workload | phase | kiln s, median (min–max) | Buildah s, median (min–max) | kiln/Buildah "
               "| target | met | kiln CPU s | Buildah CPU s | CPU ratio | kiln peak MB | Buildah peak MB | load |")
    out.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    kiln_rss = 0
    for w in order:
        phases = sorted({ph for (ww, ph, v) in rows if ww == w and v != "floor"},
                        key=lambda p: PHASES.index(p) if p in PHASES else 99)
        for ph in phases:
            k = rows.get((w, ph, "kiln"), [])
            b = rows.get((w, ph, "buildah"), [])
            km, kt = fmt_runs(k)
            bm, bt = fmt_runs(b)
            ratio = "%.3f" % (km / bm) if km is not None and bm else "—"
            tgt = TARGETS.get((w, ph))
            met = "—"
            if tgt is not None and ratio != "—":
                met = "yes" if km / bm <= tgt else "no (%.1f× the target)" % (km / bm / tgt)
            kc, kr = cpu_rss(k)
            bc, br = cpu_rss(b)
            cratio = "%.3f" % (float(kc) / float(bc)) if "—" not in (kc, bc) and float(bc) > 0 else "—"
            loads = [r[4] for r in k + b if r[4] == r[4]]
            load = "%.1f" % st.median(loads) if loads else "—"
            if kr != "—":
                kiln_rss = max(kiln_rss, int(kr))
            out.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                w, ph, kt, bt, ratio, "≤ %.2f" % tgt if tgt is not None else "", met, kc, bc, cratio, kr, br,
                load))
    out.append("")
    out.append("CPU = user + system time of the builder and its children; load = median 1-minute load "
               "average at the start of the runs (other jobs on the machine).")
    out.append("")
    out.append("Peak RSS of kiln over every workload: %d MB (target ≤ %d MB: %s)." % (
        kiln_rss, RSS_TARGET_MB, "met" if kiln_rss <= RSS_TARGET_MB else "missed"))
    # per-step overhead: run-true minus noop (issue 4)
    lines = []
    for v, name in (("kiln", "kiln"), ("buildah", "Buildah")):
        run, _ = fmt_runs(rows.get(("step-overhead", "run-true", v), []))
        noop, _ = fmt_runs(rows.get(("step-overhead", "noop", v), []))
        if run is not None and noop is not None:
            n = len([r for r in rows[("step-overhead", "run-true", v)] if r[3] == 0])
            lines.append("%s %.0f ms (build with `RUN true` %.0f ms − build without it %.0f ms, medians of %d)" % (
                name, (run - noop) * 1000, run * 1000, noop * 1000, n))
    if lines:
        out.append("")
        out.append("Cost of one no-op `RUN true` step (step-overhead, warm storage, `--no-cache`): " +
                   "; ".join(lines) + ".")
    floors = [(w, ph, rs) for (w, ph, v), rs in rows.items() if v == "floor"]
    if floors:
        out.append("")
        out.append("Physical floors on the same data, same run (system tools, no isolation):")
        out.append("")
        out.append("| workload | floor | wall s | CPU s |")
        out.append("| --- | --- | --- | --- |")
        for w, ph, rs in floors:
            r = rs[0]
            name = ph.replace("|", "\\|")  # a pipe would end the table cell
            out.append("| %s | `%s` | %s | %.2f |" % (w, name, "%.2f" % r[0] if r[3] == 0 else "FAILED", r[1]))
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("raw")
    ap.add_argument("--meta", default="")
    ap.add_argument("--doc")
    a = ap.parse_args()
    rows, order = load(a.raw)
    body = (("Measured %s.\n\n" % a.meta) if a.meta else "") + table(rows, order)
    if not a.doc:
        print(body)
        return
    try:
        text = open(a.doc).read()
    except FileNotFoundError:
        text = "# Performance\n\n%s\n%s\n" % (BEGIN, END)
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + "\n\n%s\n%s\n" % (BEGIN, END)
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with open(a.doc, "w") as f:
        f.write(head + BEGIN + "\n" + body + "\n" + END + tail)


if __name__ == "__main__":
    main()
