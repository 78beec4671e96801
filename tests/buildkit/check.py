#!/usr/bin/env python3
"""Conformance checker: evaluates a case's `expect` file against a built image.

Python 3 standard library only.

Usage:
  check.py --case CASEDIR [--oci OCIDIR] [--rc RC] [--log BUILDLOG] [--name NAME]
  check.py --dump OCIDIR [PATH...]     # debugging: print config and listed paths

Reads the OCI image layout in OCIDIR (index.json -> manifest -> config -> layers;
layers may be gzip or uncompressed tar; a nested image index is followed), applies
the layers in order (including `.wh.` whiteouts and `.wh..wh..opq` opaque markers)
into an in-memory filesystem model and evaluates the `expect` lines.  Docker
(application/vnd.docker.*) media types inside the layout are accepted as well.

Prints exactly one line:  PASS NAME | FAIL NAME: reason; reason | ERROR NAME: reason
Exit status: 0 PASS, 1 FAIL, 2 ERROR.

The expect format is documented in README.md next to this file.
"""
import argparse
import gzip
import io
import json
import os
import posixpath
import re
import sys
import tarfile

KEEP_DATA_MAX = 256 * 1024  # file contents kept in memory up to this size


class CheckError(Exception):
    """Problem with the image or the expect file itself (-> ERROR)."""


# ----------------------------------------------------------------------------
# expect file parsing

DIRECTIVES = {"SOURCE", "area", "network", "build-arg", "target", "prep",
              "buildah-deviates", "note", "timeout"}


def decode_text(s):
    """Decode the backslash escapes allowed in TEXT operands."""
    out = []
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            n = s[i + 1]
            mapping = {"n": "\n", "t": "\t", "\\": "\\", "r": "\r", "0": "\0", "s": " "}
            if n in mapping:
                out.append(mapping[n])
                i += 2
                continue
            if n == "x" and re.match(r"[0-9a-fA-F]{2}$", s[i + 2:i + 4]):
                out.append(chr(int(s[i + 2:i + 4], 16)))
                i += 4
                continue
        out.append(c)
        i += 1
    return "".join(out)


def parse_expect(path):
    meta = {"build_args": [], "target": None, "network": False, "source": [],
            "area": None, "deviates": [], "prep": [], "build_fails": False,
            "stderr": [], "checks": []}
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.rstrip("\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            word, _, rest = line.strip().partition(" ")
            rest = rest.strip()
            if word == "SOURCE":
                meta["source"].append(rest)
            elif word == "area":
                meta["area"] = rest
            elif word == "network":
                meta["network"] = True
            elif word == "build-arg":
                meta["build_args"].append(rest)
            elif word == "target":
                meta["target"] = rest
            elif word == "prep":
                meta["prep"].append(rest)
            elif word in ("build-flag", "build-env", "prebuild"):
                pass  # consumed by lib/run-case.sh
            elif word in ("buildah-deviates", "note", "timeout"):
                if word == "buildah-deviates":
                    meta["deviates"].append(rest)
            elif word == "build" and rest == "fails":
                meta["build_fails"] = True
            elif word == "stderr":
                op, _, text = rest.partition(" ")
                if op not in ("contains", "matches", "!contains"):
                    raise CheckError("expect:%d: unknown stderr operator %r" % (lineno, op))
                meta["stderr"].append((lineno, op, decode_text(text)))
            elif word in ("file", "dir", "absent", "exists", "entry", "symlink", "hardlink",
                          "fifo", "chardev", "blockdev", "socket", "config", "image",
                          "history", "layers"):
                meta["checks"].append((lineno, word, rest))
            else:
                raise CheckError("expect:%d: unknown keyword %r" % (lineno, word))
    return meta


# ----------------------------------------------------------------------------
# OCI layout reading

INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")


def blob_path(oci, digest):
    algo, _, hexd = digest.partition(":")
    p = os.path.join(oci, "blobs", algo, hexd)
    if not os.path.exists(p):
        raise CheckError("blob %s missing from layout" % digest)
    return p


def read_json_blob(oci, digest):
    with open(blob_path(oci, digest), "rb") as f:
        return json.load(f)


def pick_manifest(oci, descs):
    good = []
    for d in descs:
        plat = d.get("platform") or {}
        if plat.get("os") == "unknown" or plat.get("architecture") == "unknown":
            continue  # attestation manifests
        if (d.get("annotations") or {}).get("vnd.docker.reference.type") == "attestation-manifest":
            continue
        good.append(d)
    if not good:
        raise CheckError("no usable manifest in index")
    for d in good:
        plat = d.get("platform") or {}
        if plat.get("os") == "linux" and plat.get("architecture") in ("amd64", None):
            return d
    return good[0]


def load_image(oci):
    ip = os.path.join(oci, "index.json")
    if not os.path.exists(ip):
        raise CheckError("no index.json in %s" % oci)
    with open(ip) as f:
        index = json.load(f)
    desc = pick_manifest(oci, index.get("manifests") or [])
    for _ in range(4):
        doc = read_json_blob(oci, desc["digest"])
        mt = desc.get("mediaType") or doc.get("mediaType")
        if mt in INDEX_TYPES or ("manifests" in doc and "layers" not in doc):
            desc = pick_manifest(oci, doc.get("manifests") or [])
            continue
        manifest = doc
        break
    else:
        raise CheckError("index nesting too deep")
    config = read_json_blob(oci, manifest["config"]["digest"])
    return manifest, config


# ----------------------------------------------------------------------------
# filesystem model


class Node(object):
    __slots__ = ("mode", "uid", "gid", "size", "data", "devmajor", "devminor")

    def __init__(self, mode, uid, gid, size, data, devmajor=0, devminor=0):
        self.mode, self.uid, self.gid, self.size, self.data = mode, uid, gid, size, data
        self.devmajor, self.devminor = devmajor, devminor


class Entry(object):
    __slots__ = ("type", "node", "linkname", "implicit")

    def __init__(self, typ, node, linkname=None, implicit=False):
        self.type, self.node, self.linkname, self.implicit = typ, node, linkname, implicit


def norm(name):
    n = posixpath.normpath("/" + name).lstrip("/")
    return "" if n == "." else n


class FS(object):
    def __init__(self, want):
        self.e = {"": Entry("dir", Node(0o755, 0, 0, 0, None), implicit=True)}
        self.want = want

    def _children(self, d):
        if d == "":
            return [k for k in self.e if k != ""]
        pre = d + "/"
        return [k for k in self.e if k.startswith(pre)]

    def _remove_tree(self, p, keep=None):
        if p in self.e and (keep is None or p not in keep):
            del self.e[p]
        for k in self._children(p):
            if keep is None or k not in keep:
                del self.e[k]

    def _ensure_parents(self, p):
        parts = p.split("/")[:-1]
        cur = ""
        for part in parts:
            cur = part if not cur else cur + "/" + part
            ent = self.e.get(cur)
            if ent is None or ent.type != "dir":
                if ent is not None:
                    self._remove_tree(cur)
                self.e[cur] = Entry("dir", Node(0o755, 0, 0, 0, None), implicit=True)

    def apply_layer(self, fileobj):
        added = set()
        try:
            tf = tarfile.open(fileobj=fileobj, mode="r|*")
        except tarfile.TarError as ex:
            raise CheckError("cannot read layer: %s" % ex)
        pending_links = []
        for ti in tf:
            p = norm(ti.name)
            base = posixpath.basename(p)
            parent = posixpath.dirname(p)
            if base == ".wh..wh..opq":
                self._ensure_parents(p)
                for k in self._children(parent):
                    if k not in added:
                        del self.e[k]
                continue
            if base.startswith(".wh."):
                victim = posixpath.join(parent, base[4:]) if parent else base[4:]
                self._remove_tree(victim, keep=added)
                continue
            if p == "":
                root = self.e[""]
                root.node = Node(ti.mode & 0o7777, ti.uid, ti.gid, 0, None)
                root.implicit = False
                continue
            self._ensure_parents(p)
            old = self.e.get(p)
            if ti.isdir():
                if old is not None and old.type != "dir":
                    del self.e[p]
                    old = None
                if old is not None:
                    old.node = Node(ti.mode & 0o7777, ti.uid, ti.gid, 0, None)
                    old.implicit = False
                else:
                    self.e[p] = Entry("dir", Node(ti.mode & 0o7777, ti.uid, ti.gid, 0, None))
                added.add(p)
                continue
            if old is not None and old.type == "dir":
                self._remove_tree(p, keep=added)
            if ti.islnk():
                target = norm(ti.linkname)
                tgt = self.e.get(target)
                if tgt is None or tgt.type == "dir":
                    # target may come later in the same layer (unusual); resolve at the end
                    pending_links.append((p, target))
                    self.e[p] = Entry("file", Node(ti.mode & 0o7777, ti.uid, ti.gid, 0, b""))
                else:
                    self.e[p] = Entry(tgt.type, tgt.node, tgt.linkname)
            elif ti.issym():
                self.e[p] = Entry("symlink", Node(ti.mode & 0o7777, ti.uid, ti.gid, 0, None),
                                  linkname=ti.linkname)
            elif ti.isfile():
                data = None
                if ti.size <= KEEP_DATA_MAX or p in self.want:
                    data = tf.extractfile(ti).read()
                self.e[p] = Entry("file", Node(ti.mode & 0o7777, ti.uid, ti.gid, ti.size, data))
            elif ti.ischr() or ti.isblk() or ti.isfifo():
                typ = "chardev" if ti.ischr() else "blockdev" if ti.isblk() else "fifo"
                self.e[p] = Entry(typ, Node(ti.mode & 0o7777, ti.uid, ti.gid, 0, None,
                                            ti.devmajor, ti.devminor))
            else:
                self.e[p] = Entry("other", Node(ti.mode & 0o7777, ti.uid, ti.gid, 0, None))
            added.add(p)
        for p, target in pending_links:
            tgt = self.e.get(target)
            if tgt is not None and tgt.type != "dir":
                self.e[p] = Entry(tgt.type, tgt.node, tgt.linkname)
        tf.close()

    # path resolution inside the image root
    def resolve(self, path, follow_last=True, depth=0):
        """Return the normalized key of the entry `path` refers to, or None."""
        parts = [x for x in norm(path).split("/") if x]
        cur = ""
        links = 0
        i = 0
        while i < len(parts):
            comp = parts[i]
            cand = comp if not cur else cur + "/" + comp
            ent = self.e.get(cand)
            if ent is None:
                return None
            last = (i == len(parts) - 1)
            if ent.type == "symlink" and (not last or follow_last):
                links += 1
                if links > 40:
                    return None
                tgt = ent.linkname
                base = "" if tgt.startswith("/") else cur
                newp = norm(posixpath.join("/" + base, tgt))
                rest = parts[i + 1:]
                parts = [x for x in newp.split("/") if x] + rest
                cur = ""
                i = 0
                continue
            if not last and ent.type != "dir":
                return None
            cur = cand
            i += 1
        return cur


def build_fs(oci, manifest, want):
    fs = FS(want)
    for layer in manifest.get("layers") or []:
        mt = layer.get("mediaType", "")
        if "zstd" in mt:
            raise CheckError("zstd layers are not supported by this checker")
        with open(blob_path(oci, layer["digest"]), "rb") as f:
            head = f.read(4)
            f.seek(0)
            if head[:4] == b"\x28\xb5\x2f\xfd":
                raise CheckError("zstd layers are not supported by this checker")
            fs.apply_layer(f)
    return fs


# ----------------------------------------------------------------------------
# evaluation

def fmt_bytes(b, limit=120):
    if b is None:
        return "<not loaded>"
    s = b.decode("utf-8", "backslashreplace")
    r = json.dumps(s)
    return r if len(r) <= limit else r[:limit] + '..."'


def parse_mode(s):
    try:
        return int(s, 8)
    except ValueError:
        raise CheckError("bad mode %r" % s)


def check_node_attr(fs, key, ent, op, arg, what, path):
    """Evaluate `OP ARG` for a file/dir entry. Returns failure string or None."""
    if op is None:
        return None
    node = ent.node
    if op == "mode":
        want = parse_mode(arg)
        if node.mode != want:
            return "%s %s: mode %04o, want %04o" % (what, path, node.mode, want)
        return None
    if op == "owner":
        got = "%d:%d" % (node.uid, node.gid)
        if got != arg.strip():
            return "%s %s: owner %s, want %s" % (what, path, got, arg.strip())
        return None
    if what == "dir":
        pre = key + "/" if key else ""
        if op == "empty":
            kids = fs._children(key)
            if kids:
                return "dir %s: not empty (%s)" % (path, ", ".join(sorted(kids)[:5]))
            return None
        if op in ("entries", "has", "!has"):
            got = sorted(k[len(pre):] for k in fs._children(key) if "/" not in k[len(pre):])
            want = sorted(decode_text(w) for w in arg.split())
            if op == "entries" and got != want:
                return "dir %s: entries %s, want %s" % (path, got, want)
            if op == "has" and not set(want) <= set(got):
                return "dir %s: entries %s lack %s" % (path, got, sorted(set(want) - set(got)))
            if op == "!has" and set(want) & set(got):
                return "dir %s: has %s" % (path, sorted(set(want) & set(got)))
            return None
        raise CheckError("unknown dir operator %r" % op)
    if op == "size":
        if node.size != int(arg):
            return "file %s: size %d, want %s" % (path, node.size, arg)
        return None
    if op == "empty":
        if node.size != 0:
            return "file %s: size %d, want empty" % (path, node.size)
        return None
    data = node.data
    if data is None:
        raise CheckError("content of %s not loaded" % path)
    if op == "matches":
        if not re.search(arg, data.decode("utf-8", "replace"), re.M):
            return "file %s: %s does not match /%s/" % (path, fmt_bytes(data), arg)
        return None
    text = decode_text(arg).encode("utf-8")
    if op == "content":
        if data != text:
            return "file %s: content %s, want %s" % (path, fmt_bytes(data), fmt_bytes(text))
        return None
    if op == "contains":
        if text not in data:
            return "file %s: %s does not contain %s" % (path, fmt_bytes(data), fmt_bytes(text))
        return None
    if op == "!contains":
        if text in data:
            return "file %s: %s contains %s" % (path, fmt_bytes(data), fmt_bytes(text))
        return None
    raise CheckError("unknown file operator %r" % op)


def config_value(config, scope, key):
    """Return (found, value)."""
    if scope == "image":
        base = config
    else:
        base = config.get("config") or {}
    field, _, sub = key.partition(".")
    if field not in base:
        return False, None
    val = base[field]
    if field == "Env" and isinstance(val, list):
        d = {}
        for item in val:
            k, _, v = item.partition("=")
            d[k] = v
        if sub:
            return (sub in d), d.get(sub)
        return True, val
    if sub:
        if isinstance(val, dict) and sub in val:
            return True, val[sub]
        return False, None
    return True, val


def is_empty(v):
    return v is None or v == [] or v == {} or v == ""


def eval_config(config, scope, rest):
    m = re.match(r"(\S+)\s+(==|!=|contains|!contains|has|!has|empty|!empty|absent|matches)\s*(.*)$", rest)
    if not m:
        raise CheckError("bad %s line: %r" % (scope, rest))
    key, op, arg = m.group(1), m.group(2), m.group(3)
    found, val = config_value(config, scope, key)
    shown = json.dumps(val) if found else "<unset>"
    label = "%s %s" % (scope, key)
    if op in ("empty", "absent"):
        if found and not is_empty(val):
            return "%s: %s, want empty" % (label, shown)
        return None
    if op == "!empty":
        if not found or is_empty(val):
            return "%s: %s, want non-empty" % (label, shown)
        return None
    if op in ("==", "!="):
        raw = decode_text(arg)
        try:
            want = json.loads(arg)
        except ValueError:
            want = raw
        eq = found and (val == want or (isinstance(val, str) and val == raw)
                        or (isinstance(val, (int, float)) and not isinstance(val, bool)
                            and str(val) == raw))
        if op == "==" and not eq:
            return "%s: %s, want %s" % (label, shown, json.dumps(want))
        if op == "!=" and eq:
            return "%s: is %s" % (label, shown)
        return None
    text = decode_text(arg)
    if op in ("contains", "!contains"):
        if isinstance(val, list):
            has = text in val
        elif isinstance(val, str):
            has = text in val
        elif isinstance(val, dict):
            has = text in val
        else:
            has = False
        if op == "contains" and not has:
            return "%s: %s does not contain %s" % (label, shown, json.dumps(text))
        if op == "!contains" and has:
            return "%s: %s contains %s" % (label, shown, json.dumps(text))
        return None
    if op in ("has", "!has"):
        if key == "Env" and isinstance(val, list):
            keys = [x.partition("=")[0] for x in val]
        elif isinstance(val, dict):
            keys = list(val.keys())
        elif isinstance(val, list):
            keys = val
        else:
            keys = []
        has = text in keys
        if op == "has" and not has:
            return "%s: %s has no %s" % (label, shown, json.dumps(text))
        if op == "!has" and has:
            return "%s: %s has %s" % (label, shown, json.dumps(text))
        return None
    if op == "matches":
        if not found or not re.search(text, val if isinstance(val, str) else json.dumps(val)):
            return "%s: %s does not match /%s/" % (label, shown, text)
        return None
    raise CheckError("unhandled operator %s" % op)


def eval_check(fs, manifest, config, kind, rest):
    if kind in ("config", "image"):
        return eval_config(config, kind, rest)
    if kind == "history":
        hist = config.get("history") or []
        m = re.match(r"(-?\d+)\s+(\S+)\s+(.*)$", rest)
        if m:
            # history INDEX FIELD OP VALUE: one entry (negative INDEX counts from the end)
            i = int(m.group(1))
            if not -len(hist) <= i < len(hist):
                return "history %d: only %d entries" % (i, len(hist))
            r = eval_config({"h": hist[i]}, "image", "h.%s %s" % (m.group(2), m.group(3)))
            return None if r is None else "history[%d]: %s" % (i, r)
        m = re.match(r"(count|nonempty)\s+(\d+)$", rest)
        if not m:
            raise CheckError("bad history line %r" % rest)
        if m.group(1) == "count":
            got = len(hist)
        else:
            got = len([h for h in hist if not h.get("empty_layer")])
        if got != int(m.group(2)):
            return "history %s: %d, want %s" % (m.group(1), got, m.group(2))
        return None
    if kind == "layers":
        m = re.match(r"count\s+(\d+)$", rest)
        if not m:
            raise CheckError("bad layers line %r" % rest)
        got = len(manifest.get("layers") or [])
        if got != int(m.group(1)):
            return "layers count: %d, want %s" % (got, m.group(1))
        return None
    if kind == "symlink":
        m = re.match(r"(\S+)\s+->\s+(.*)$", rest)
        if not m:
            raise CheckError("bad symlink line %r" % rest)
        path, target = decode_text(m.group(1)), decode_text(m.group(2))
        parent = fs.resolve(posixpath.dirname("/" + norm(path)))
        if parent is None:
            return "symlink %s: parent missing" % path
        key = norm(posixpath.join("/" + parent, posixpath.basename(norm(path))))
        ent = fs.e.get(key)
        if ent is None:
            return "symlink %s: missing" % path
        if ent.type != "symlink":
            return "symlink %s: is a %s" % (path, ent.type)
        if ent.linkname != target:
            return "symlink %s: points to %s, want %s" % (path, ent.linkname, target)
        return None
    if kind == "hardlink":
        m = re.match(r"(\S+)\s+->\s+(\S+)$", rest)
        if not m:
            raise CheckError("bad hardlink line %r" % rest)
        a, b = fs.resolve(m.group(1)), fs.resolve(m.group(2))
        if a is None or b is None:
            return "hardlink %s -> %s: %s missing" % (m.group(1), m.group(2),
                                                      m.group(1) if a is None else m.group(2))
        ea, eb = fs.e[a], fs.e[b]
        if ea.type != "file" or eb.type != "file":
            return "hardlink %s -> %s: not both regular files" % (m.group(1), m.group(2))
        if ea.node is not eb.node:
            return "hardlink %s -> %s: not the same inode" % (m.group(1), m.group(2))
        return None
    parts = rest.split(" ", 2)
    path = decode_text(parts[0])
    op = parts[1] if len(parts) > 1 else None
    arg = parts[2] if len(parts) > 2 else ""
    if kind in ("absent", "exists", "entry"):
        parent = fs.resolve(posixpath.dirname("/" + norm(path)))
        key = None if parent is None else norm(posixpath.join("/" + parent,
                                                              posixpath.basename(norm(path))))
        present = key is not None and key != "" and key in fs.e
        if kind == "entry":
            if op != "type":
                raise CheckError("entry supports only: entry PATH type TYPE")
            if not present:
                return "entry %s: missing" % path
            got = fs.e[key].type
            if got != arg.strip():
                return "entry %s: is a %s, want %s" % (path, got, arg.strip())
            return None
        if kind == "absent" and present:
            return "absent %s: exists (%s)" % (path, fs.e[key].type)
        if kind == "exists" and not present:
            return "exists %s: missing" % path
        return None
    key = fs.resolve(path)
    if key is None:
        return "%s %s: missing" % (kind, path)
    ent = fs.e[key]
    want_type = {"file": "file", "dir": "dir", "fifo": "fifo", "chardev": "chardev",
                 "blockdev": "blockdev", "socket": "other"}[kind]
    if ent.type != want_type:
        return "%s %s: is a %s" % (kind, path, ent.type)
    if kind in ("file", "dir"):
        return check_node_attr(fs, key, ent, op, arg, kind, path)
    return None


def wanted_paths(checks):
    want = set()
    for _, kind, rest in checks:
        if kind in ("file",):
            want.add(norm(decode_text(rest.split(" ")[0])))
    return want


def run_case(case_dir, oci, rc, log, name):
    meta = parse_expect(os.path.join(case_dir, "expect"))
    failures = []
    logtext = ""
    if log and os.path.exists(log):
        with open(log, "rb") as f:
            logtext = f.read().decode("utf-8", "replace")
    if meta["build_fails"]:
        if rc is None:
            raise CheckError("--rc needed")
        if rc == 0:
            return "FAIL", ["build succeeded, expected failure"]
        for lineno, op, text in meta["stderr"]:
            if op == "contains" and text.lower() not in logtext.lower():
                failures.append("build output lacks %s" % json.dumps(text))
            elif op == "!contains" and text.lower() in logtext.lower():
                failures.append("build output contains %s" % json.dumps(text))
            elif op == "matches" and not re.search(text, logtext, re.M | re.I):
                failures.append("build output does not match /%s/" % text)
        return ("FAIL" if failures else "PASS"), failures
    if rc not in (None, 0):
        tail = [l for l in logtext.strip().splitlines() if l.strip()][-3:]
        return "FAIL", ["build failed (rc=%s): %s" % (rc, " | ".join(t.strip()[:200] for t in tail))]
    if not oci or not os.path.isdir(oci):
        raise CheckError("no OCI layout to check")
    manifest, config = load_image(oci)
    need_fs = any(k not in ("config", "image", "history", "layers") for _, k, _ in meta["checks"])
    fs = build_fs(oci, manifest, wanted_paths(meta["checks"])) if need_fs else None
    for lineno, kind, rest in meta["checks"]:
        try:
            r = eval_check(fs, manifest, config, kind, rest)
        except CheckError as ex:
            raise CheckError("expect:%d: %s" % (lineno, ex))
        if r:
            failures.append(r)
    return ("FAIL" if failures else "PASS"), failures


def dump(oci, paths):
    manifest, config = load_image(oci)
    print(json.dumps(config.get("config"), indent=1, sort_keys=True))
    print("author:", config.get("author"), " layers:", len(manifest.get("layers") or []),
          " history:", len(config.get("history") or []))
    fs = build_fs(oci, manifest, set(norm(p) for p in paths))
    if not paths:
        for k in sorted(fs.e):
            e = fs.e[k]
            if e.implicit:
                continue
            print("%-8s %04o %d:%d %s%s" % (e.type, e.node.mode, e.node.uid, e.node.gid, "/" + k,
                                             " -> " + e.linkname if e.type == "symlink" else ""))
    for p in paths:
        key = fs.resolve(p, follow_last=False)
        if key is None:
            print(p, "MISSING")
            continue
        e = fs.e[key]
        print(p, e.type, "%04o" % e.node.mode, "%d:%d" % (e.node.uid, e.node.gid),
              e.linkname or "", fmt_bytes(e.node.data, 400) if e.type == "file" else "")
        if e.type == "dir":
            for k in sorted(fs._children(key)):
                c = fs.e[k]
                print("   ", c.type, "%04o" % c.node.mode, "%d:%d" % (c.node.uid, c.node.gid), "/" + k,
                      c.linkname or "")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--case")
    ap.add_argument("--oci")
    ap.add_argument("--rc", type=int)
    ap.add_argument("--log")
    ap.add_argument("--name")
    ap.add_argument("--dump", nargs="+")
    a = ap.parse_args()
    if a.dump:
        dump(a.dump[0], a.dump[1:])
        return 0
    if not a.case:
        ap.error("--case is required")
    name = a.name or os.path.basename(os.path.normpath(a.case))
    try:
        status, reasons = run_case(a.case, a.oci, a.rc, a.log, name)
    except (CheckError, OSError, ValueError, KeyError, tarfile.TarError, EOFError,
            gzip.BadGzipFile if hasattr(gzip, "BadGzipFile") else OSError) as ex:
        print("ERROR %s: %s" % (name, ex))
        return 2
    if status == "PASS":
        print("PASS %s" % name)
        return 0
    print("FAIL %s: %s" % (name, "; ".join(reasons)))
    return 1


if __name__ == "__main__":
    sys.exit(main())
