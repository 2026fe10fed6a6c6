#!/usr/bin/env python3
"""Writes a one-layer OCI image archive (oci-layout, index.json, blobs) of a root file system,
named for containerd with the io.containerd.image.name annotation, for `ctr images import`: no
registry and no container daemon are needed (none is reachable from the project's machines).
The layer is reproducible: entries sorted, owned by root, timestamps zero.

Usage: oci_image.py [--gzip] ROOTFS IMAGE_NAME OUT.tar [ENTRYPOINT ...] [--env K=V ...] [--cmd ARG ...]
ROOTFS is a directory (its contents become /), or a single file (it becomes /<its name>).
"""
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile


def blob(tar, data):
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo("blobs/sha256/" + digest)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
    return "sha256:" + digest


def layer_of(rootfs):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as layer:
        def add(path, arcname):
            info = layer.gettarinfo(path, arcname)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            if info.isfile():
                with open(path, "rb") as f:
                    layer.addfile(info, f)
            else:
                layer.addfile(info)
        if os.path.isfile(rootfs):
            add(rootfs, os.path.basename(rootfs))
        else:
            for top, dirs, files in os.walk(rootfs):
                dirs.sort()
                rel = os.path.relpath(top, rootfs)
                if rel != ".":
                    add(top, rel)
                # A symbolic link to a directory (var/run -> ../run) is listed among the
                # directories but never walked into: it is an entry of its own.
                links = [d for d in dirs if os.path.islink(os.path.join(top, d))]
                dirs[:] = [d for d in dirs if d not in links]
                for f in sorted(files + links):
                    p = os.path.join(top, f)
                    add(p, os.path.normpath(os.path.join(rel, f)))
    return buf.getvalue()


def main():
    args = sys.argv[1:]
    compress = "--gzip" in args
    args = [a for a in args if a != "--gzip"]
    env = [args[i + 1] for i, a in enumerate(args) if a == "--env"]
    cmd = [args[i + 1] for i, a in enumerate(args) if a == "--cmd"]
    args = [a for i, a in enumerate(args)
            if a not in ("--env", "--cmd") and (i == 0 or args[i - 1] not in ("--env", "--cmd"))]
    rootfs, name, out = args[0:3]
    entrypoint = args[3:] or ["/" + os.path.basename(rootfs)]
    tar_bytes = layer_of(rootfs)
    diff_id = "sha256:" + hashlib.sha256(tar_bytes).hexdigest()
    layer_bytes = gzip.compress(tar_bytes, mtime=0) if compress else tar_bytes
    media = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if compress else "")
    with tarfile.open(out, "w") as tar:
        layer_digest = blob(tar, layer_bytes)
        config = {"Entrypoint": entrypoint}
        if env:
            config["Env"] = env
        if cmd:
            config["Cmd"] = cmd
        config = json.dumps({
            "architecture": "amd64", "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }).encode()
        config_digest = blob(tar, config)
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": media, "digest": layer_digest, "size": len(layer_bytes)}],
        }).encode()
        manifest_digest = blob(tar, manifest)
        for path, data in [
            ("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
            ("index.json", json.dumps({
                "schemaVersion": 2,
                "manifests": [{
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": manifest_digest, "size": len(manifest),
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {"io.containerd.image.name": name,
                                    "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1]},
                }],
            }).encode()),
        ]:
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


if __name__ == "__main__":
    main()
