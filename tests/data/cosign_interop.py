"""An independent implementation of cosign's key-based formats, for kiln's interop test.

Written from the formats' descriptions (go-securesystemslib's encrypted envelope, cosign's
simple-signing payload and `sha256-<hex>.sig` storage), with Python's hashlib.scrypt, PyNaCl's
secretbox and pyca/cryptography's ECDSA; it shares no code with kiln.

  verify REGISTRY REPO DIGEST PUBKEY      checks the signatures at REPO:sha256-<hex>.sig
  sign REGISTRY REPO DIGEST KEY PASSWORD IDENTITY
                                          decrypts KEY, signs DIGEST the way containers/image
                                          does (creator and timestamp in "optional") and
                                          pushes the signature manifest
"""
import base64, hashlib, json, sys, time, urllib.request

import nacl.secret
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

SIG_MT = "application/vnd.dev.cosign.simplesigning.v1+json"
ANN = "dev.cosignproject.cosign/signature"


def http(method, url, body=None, ctype=None, accept=None):
    req = urllib.request.Request(url, data=body, method=method)
    if ctype:
        req.add_header("Content-Type", ctype)
    if accept:
        req.add_header("Accept", accept)
    with urllib.request.urlopen(req) as r:
        return r.read(), r.headers


def pem_body(text):
    lines = [l for l in text.strip().splitlines() if not l.startswith("-----")]
    return base64.b64decode("".join(lines))


def verify(reg, repo, digest, pubkey):
    pub = serialization.load_pem_public_key(open(pubkey, "rb").read())
    tag = "sha256-%s.sig" % digest.split(":")[1]
    raw, _ = http("GET", "http://%s/v2/%s/manifests/%s" % (reg, repo, tag),
                  accept="application/vnd.oci.image.manifest.v1+json")
    m = json.loads(raw)
    good = 0
    for l in m["layers"]:
        if l["mediaType"] != SIG_MT:
            continue
        payload, _ = http("GET", "http://%s/v2/%s/blobs/%s" % (reg, repo, l["digest"]))
        assert "sha256:" + hashlib.sha256(payload).hexdigest() == l["digest"]
        pub.verify(base64.b64decode(l["annotations"][ANN]), payload, ec.ECDSA(hashes.SHA256()))
        p = json.loads(payload)
        assert p["critical"]["type"] == "cosign container image signature", p
        assert p["critical"]["image"]["docker-manifest-digest"] == digest, p
        good += 1
    assert good, "no signature layers"
    print("verified %d signature(s)" % good)


def decrypt_key(path, password):
    env = json.loads(pem_body(open(path).read()))
    assert env["kdf"]["name"] == "scrypt" and env["cipher"]["name"] == "nacl/secretbox"
    prm = env["kdf"]["params"]
    key = hashlib.scrypt(password.encode(), salt=base64.b64decode(env["kdf"]["salt"]),
                         n=prm["N"], r=prm["r"], p=prm["p"], maxmem=256 << 20, dklen=32)
    der = nacl.secret.SecretBox(key).decrypt(base64.b64decode(env["ciphertext"]),
                                             base64.b64decode(env["cipher"]["nonce"]))
    return serialization.load_der_private_key(der, password=None)


def put_blob(reg, repo, data):
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    _, h = http("POST", "http://%s/v2/%s/blobs/uploads/" % (reg, repo), body=b"")
    loc = h["Location"]
    if loc.startswith("/"):
        loc = "http://%s%s" % (reg, loc)
    http("PUT", loc + ("&" if "?" in loc else "?") + "digest=" + d, body=data,
         ctype="application/octet-stream")
    return {"mediaType": "", "digest": d, "size": len(data)}


def sign(reg, repo, digest, keyfile, password, identity):
    key = decrypt_key(keyfile, password)
    payload = json.dumps({
        "critical": {"identity": {"docker-reference": identity},
                     "image": {"docker-manifest-digest": digest},
                     "type": "cosign container image signature"},
        "optional": {"creator": "cosign_interop.py", "timestamp": int(time.time())},
    }).encode()
    sig = base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()
    layer = put_blob(reg, repo, payload)
    layer.update(mediaType=SIG_MT, annotations={ANN: sig})
    cfg = json.dumps({"architecture": "", "os": "", "config": {},
                      "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]}}).encode()
    c = put_blob(reg, repo, cfg)
    c["mediaType"] = "application/vnd.oci.image.config.v1+json"
    m = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": c, "layers": [layer]}).encode()
    tag = "sha256-%s.sig" % digest.split(":")[1]
    http("PUT", "http://%s/v2/%s/manifests/%s" % (reg, repo, tag), body=m,
         ctype="application/vnd.oci.image.manifest.v1+json")
    print("signed")


if __name__ == "__main__":
    {"verify": verify, "sign": sign}[sys.argv[1]](*sys.argv[2:])
