#!/usr/bin/env bash
# The arm64 half of CI: the agent on Debian bookworm's own arm64 stack, emulated by QEMU.
#
#   .ci/arm64.sh setup            apt-get install the host tools, register the qemu-aarch64 binfmt
#   .ci/arm64.sh rootfs           debootstrap bookworm arm64 (cached in .cache/arm64, keyed by the
#                                 package lists), plus the Debian kernel .deb for the boot test
#   .ci/arm64.sh qemu-user-tests  the project's test suite inside that rootfs (chroot + binfmt)
#   .ci/arm64.sh boot-test        qemu-system-aarch64 -cpu cortex-a53 boots the rootfs, the agent
#                                 starts at boot and registers with a CM on the host's loopback
#   .ci/arm64.sh image            buildah builds Dockerfile.arm64 from the debootstrapped base
#   .ci/arm64.sh all              all of the above, in that order
#
# Every step prints its duration and exits non-zero with a message naming what failed. The only
# skip is a host that cannot run foreign binaries (no binfmt_misc): then the whole arm64 half is
# skipped with that reason, loudly, and exit code 0 -- unless AOS_SM_ARM64_REQUIRED=1, which
# .ci/run sets: there it fails the run.
#
# Runs as root on a Debian bookworm host (debootstrap, chroot, mounts, buildah storage).
set -eEuo pipefail
# Any unguarded failure names itself (the steps guard the expected ones with a message of their own).
trap 'printf "[arm64] FAILED at .ci/arm64.sh line %s: %s\n" "$LINENO" "$BASH_COMMAND" >&2' ERR
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PROJECT=$PWD
CACHE=$PROJECT/.cache/arm64
SUITE=bookworm
# The runtime stack the agent needs: what an embedded bookworm image would carry.
# libnftables1 and dnsmasq-base: the network manager's firewall/accounting and DNS (NETWORK.md).
RUNTIME_PKGS="python3 python3-grpcio python3-protobuf python3-psutil python3-pyroute2 python3-transitions python3-cryptography runc libnftables1 dnsmasq-base"
# What the test suite and the boot test need on top: pytest, the build of the project and of
# cgroupspy (not in Debian; pure python, installed with pip --no-deps), openssl (the TLS tests
# make certificates with it), busybox-static (the boot test's initramfs).
TEST_PKGS="python3-pytest python3-setuptools python3-pip openssl busybox-static"
CGROUPSPY="cgroupspy==0.2.3 --hash=sha256:8ee941c7ab9234a0b17a81b0b26487f7f1031f78b7a24cdd8eed1b5fa5970496"
# Bump when the way the rootfs is made changes; with the lists above it names the cache entry.
ROOTFS_SCHEME=2
KEY=$(printf '%s\n' "$SUITE" "$RUNTIME_PKGS" "$TEST_PKGS" "$CGROUPSPY" "$ROOTFS_SCHEME" \
    | sha256sum | cut -c1-12)
ENTRY=$CACHE/$SUITE-$KEY
ROOTFS=$ENTRY/rootfs            # debootstrap + RUNTIME_PKGS + TEST_PKGS: the suite and the boot test
BASE_TAR=$ENTRY/base.tar        # debootstrap minbase alone: the container base image
KERNEL_DIR=$ENTRY/kernel        # the unpacked linux-image .deb (vmlinuz + modules)
# Dockerfile.arm64's FROM: Debian's own slim image (itself a debootstrap minbase); here the
# locally debootstrapped minbase is imported under that name, since no registry is in reach.
IMAGE_BASE=docker.io/library/debian:bookworm-slim
IMAGE=localhost/aos-sm:arm64

log() { printf '[arm64] %s\n' "$*" >&2; }
die() { printf '[arm64] FAILED: %s\n' "$*" >&2; exit 1; }

# --- mounts into a chroot, always undone (the trap also runs on failure) ----------------------
MOUNTS=()
unmount_all() {
    local i m
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        umount "${MOUNTS[i]}" 2>/dev/null || umount -l "${MOUNTS[i]}" || true
    done
    MOUNTS=()
    # What the suite itself mounted inside the chroot (the network manager bind-mounts /run/netns
    # onto itself, as iproute2 does): left there, it breaks the next copy or removal of the cache.
    while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done < <(awk -v c="$CACHE/" 'index($5, c) == 1 {print $5}' /proc/self/mountinfo | sort -r)
}
trap unmount_all EXIT
mount_chroot() {
    local r=$1
    mount -t proc proc "$r/proc" || die "mounting /proc into $r"
    MOUNTS+=("$r/proc")
    # Read-only and without the host's cgroup mounts: tests needing cgroups skip inside.
    mount -t sysfs -o ro sysfs "$r/sys" || die "mounting /sys into $r"
    MOUNTS+=("$r/sys")
    mount --bind /dev "$r/dev" || die "bind-mounting /dev into $r"
    MOUNTS+=("$r/dev")
    mount --bind /dev/pts "$r/dev/pts" || die "bind-mounting /dev/pts into $r"
    MOUNTS+=("$r/dev/pts")
}
# rm -rf a tree that may have been a chroot: refuse while anything is still mounted inside it.
remove_tree() {
    local t=$1
    [ -e "$t" ] || return 0
    if findmnt -rn -o TARGET | grep -q "^$(realpath "$t")/"; then
        die "refusing to remove $t: something is still mounted inside it"
    fi
    rm -rf --one-file-system "$t"
}
in_chroot() {
    local r=$1; shift
    chroot "$r" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive "$@"
}

timed() {
    local name=$1; shift
    local t0=$SECONDS
    log "== $name"
    "$@"
    log "== $name: done in $((SECONDS - t0)) s"
}

# The Debian mirror this machine's apt uses (only package registries are reachable).
debian_mirror() {
    if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
    local m
    m=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '/^URIs:/ {for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) {print $i; exit}}')
    if [ -z "$m" ]; then
        m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | awk '$1 == "deb" && $2 !~ /^\[/ && $2 ~ /\/debian\/?$/ {print $2; exit}')
    fi
    echo "${m:-http://deb.debian.org/debian}"
}

# --- setup: host packages and binfmt ------------------------------------------------------------
HOST_PKGS="qemu-user-static binfmt-support debootstrap qemu-system-arm ipxe-qemu buildah
    e2fsprogs cpio xz-utils rsync kmod"
setup() {
    local missing=() p
    for p in $HOST_PKGS; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "apt-get install ${missing[*]}"
        apt-get update -q >/dev/null || die "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
            >/dev/null || die "apt-get install ${missing[*]}"
    fi
    binfmt_ready
}

# qemu-aarch64-static registered with the F flag: the kernel opens the interpreter once, so it
# runs inside any chroot without being copied there.
binfmt_ready() {
    if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
    fi
    [ -e /proc/sys/fs/binfmt_misc/status ] || return 1
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 \
        >/dev/null 2>&1 || true
    grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null || return 1
    grep -q '^flags: .*F' /proc/sys/fs/binfmt_misc/qemu-aarch64
}

# cgroupspy's sdist in $CACHE/downloads, checked against CGROUPSPY's hash; prints its path.
cgroupspy_sdist() {
    local dl=$CACHE/downloads name=${CGROUPSPY%% *} hash=${CGROUPSPY##*sha256:}
    local file=$dl/${name%%==*}-${name##*==}.tar.gz
    mkdir -p "$dl"
    if [ ! -e "$file" ]; then
        local pip=(python3 -m pip)
        [ -x "$PROJECT/.venv/bin/python" ] && pip=("$PROJECT/.venv/bin/python" -m pip)
        "${pip[@]}" download -q --no-deps --no-binary :all: -d "$dl" "$name" >&2 \
            || die "pip download $name on the host"
    fi
    echo "$hash  $file" | sha256sum -c --quiet - >&2 || { rm -f "$file"; die "$file: sha256 mismatch"; }
    echo "$file"
}

# What Debian's bookworm-slim image leaves out (its dpkg path-excludes, so that later installs stay
# slim too): documentation, man pages, translations; and apt's lists (~50 MB, fetched again by
# `apt-get update`).
slim() {
    local r=$1
    cat > "$r/etc/dpkg/dpkg.cfg.d/slim" <<'EXCLUDES'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
EXCLUDES
    find "$r/usr/share/doc" -mindepth 1 -not -type d -not -name copyright -delete
    rm -rf "$r"/usr/share/man/* "$r"/usr/share/groff/* "$r"/usr/share/info/* "$r"/usr/share/lintian/* \
        "$r"/usr/share/locale/* "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/archives/*.deb
}

# --- rootfs -------------------------------------------------------------------------------------
rootfs() {
    if [ -e "$ENTRY/.complete" ]; then
        log "rootfs cached: $ENTRY"
        return
    fi
    mkdir -p "$CACHE"
    # Older entries (another package list) go: one rootfs is ~600 MB.
    local old
    for old in "$CACHE"/"$SUITE"-*; do
        [ -e "$old" ] && [ "$old" != "$ENTRY" ] && { log "removing stale $old"; remove_tree "$old"; }
    done
    mkdir -p "$ENTRY"
    local t0
    # Stages leave stamps, so a failure late (a download) does not redo the debootstrap.
    if [ ! -e "$ENTRY/.debootstrap" ]; then
        remove_tree "$ROOTFS"
        local mirror; mirror=$(debian_mirror)
        log "debootstrap $SUITE arm64 minbase from $mirror"
        t0=$SECONDS
        debootstrap --arch=arm64 --variant=minbase "$SUITE" "$ROOTFS" "$mirror" \
            > "$ENTRY/debootstrap.log" 2>&1 || { tail -30 "$ENTRY/debootstrap.log"; die "debootstrap"; }
        log "debootstrap: $((SECONDS - t0)) s"
        slim "$ROOTFS"
        # The container base: minbase, slimmed as Debian's bookworm-slim is.
        tar -C "$ROOTFS" --numeric-owner -cf "$BASE_TAR" . || die "tar of the base rootfs"
        touch "$ENTRY/.debootstrap"
    fi

    mount_chroot "$ROOTFS"
    if [ ! -e "$ENTRY/.packages" ]; then
        # debootstrap writes no /etc/hosts: without it "localhost" would go to DNS.
        printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' > "$ROOTFS/etc/hosts"
        # No daemons start inside a chroot.
        printf '#!/bin/sh\nexit 101\n' > "$ROOTFS/usr/sbin/policy-rc.d"
        chmod +x "$ROOTFS/usr/sbin/policy-rc.d"
        t0=$SECONDS
        in_chroot "$ROOTFS" apt-get update -q > "$ENTRY/apt.log" 2>&1 \
            || { tail -30 "$ENTRY/apt.log"; die "apt-get update in the rootfs"; }
        # shellcheck disable=SC2086
        in_chroot "$ROOTFS" apt-get install -y -q --no-install-recommends $RUNTIME_PKGS $TEST_PKGS \
            >> "$ENTRY/apt.log" 2>&1 || { tail -30 "$ENTRY/apt.log"; die "apt-get install in the rootfs"; }
        log "apt-get install in the rootfs: $((SECONDS - t0)) s"
        touch "$ENTRY/.packages"
    fi
    # cgroupspy is not packaged by Debian: its sdist, pinned by hash, is fetched by the host's pip
    # (whatever CA or proxy the host needs stays on the host) and built inside without deps.
    local sdist
    sdist=$(cgroupspy_sdist)
    cp "$sdist" "$ROOTFS/tmp/"
    in_chroot "$ROOTFS" python3 -m pip install -q --no-deps --no-build-isolation --no-index \
        --break-system-packages --no-cache-dir "/tmp/$(basename "$sdist")" \
        >> "$ENTRY/apt.log" 2>&1 || { tail -30 "$ENTRY/apt.log"; die "pip install cgroupspy in the rootfs"; }
    rm -f "$ROOTFS/tmp/$(basename "$sdist")"

    # The kernel for the boot test: Debian's arm64 linux-image .deb, downloaded, never installed
    # (its initramfs hook alone takes >12 minutes emulated); unpacked on the host.
    local kpkg
    kpkg=$(in_chroot "$ROOTFS" apt-cache depends linux-image-arm64 \
        | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ {print $2; exit}')
    [ -n "$kpkg" ] || die "cannot resolve linux-image-arm64 to a kernel package"
    mkdir -p "$ROOTFS/tmp/kernel"
    in_chroot "$ROOTFS" /bin/sh -c "cd /tmp/kernel && apt-get download -q $kpkg" \
        >> "$ENTRY/apt.log" 2>&1 || { tail -30 "$ENTRY/apt.log"; die "apt-get download $kpkg"; }
    mkdir -p "$KERNEL_DIR"
    dpkg-deb -x "$ROOTFS"/tmp/kernel/*.deb "$KERNEL_DIR" || die "unpacking $kpkg"
    echo "$kpkg" > "$KERNEL_DIR/PACKAGE"
    rm -rf "$ROOTFS/tmp/kernel"
    in_chroot "$ROOTFS" apt-get clean
    rm -rf "$ROOTFS"/var/lib/apt/lists/*_Packages "$ROOTFS"/var/lib/apt/lists/*_InRelease
    unmount_all
    touch "$ENTRY/.complete"
    log "rootfs ready: $ENTRY ($(du -sh "$ROOTFS" | cut -f1), kernel $kpkg)"
}

# --- the project, installed into the rootfs the way a package would be -------------------------
# The checkout is copied to /opt/aos-sm (tests and data with it) and installed with --no-deps
# --no-build-isolation: Debian's python3-setuptools builds it, Debian's packages are its
# dependencies, nothing comes from PyPI.
project_into_rootfs() {
    [ -e "$ENTRY/.complete" ] || die "no rootfs: run '.ci/arm64.sh rootfs' first"
    rsync -a --delete --exclude=.git --exclude=.venv --exclude=.cache --exclude='__pycache__' \
        --exclude='*.egg-info' --exclude=build --exclude=.pytest_cache --exclude=.mypy_cache \
        "$PROJECT/" "$ROOTFS/opt/aos-sm/" || die "copying the checkout into the rootfs"
    in_chroot "$ROOTFS" /bin/sh -c 'cd /opt/aos-sm && python3 -m pip install -q --no-deps \
        --no-build-isolation --no-cache-dir --break-system-packages --force-reinstall . \
        && rm -rf build *.egg-info' > "$ENTRY/project.log" 2>&1 \
        || { tail -30 "$ENTRY/project.log"; die "pip install of the project inside the rootfs"; }
    # The shared wire contract sits next to the checkout when there is one (tests/test_wire_contract.py
    # looks beside the project's root): give the copy the same neighbour.
    rm -rf "$ROOTFS/opt/shared"
    if [ -d "$(dirname "$PROJECT")/shared/wire" ]; then
        mkdir -p "$ROOTFS/opt/shared" && cp -r "$(dirname "$PROJECT")/shared/wire" "$ROOTFS/opt/shared/"
    fi
    in_chroot "$ROOTFS" /usr/local/bin/aos-sm --help > /dev/null \
        || die "aos-sm --help fails inside the rootfs"
}

qemu_user_tests() {
    mount_chroot "$ROOTFS"
    project_into_rootfs
    local versions
    versions=$(in_chroot "$ROOTFS" python3 -c 'import platform, importlib.metadata as m
import grpc, google.protobuf, transitions, psutil, pyroute2, cgroupspy
print(platform.machine(), "python", platform.python_version(), *(f"{d} {m.version(d)}" for d in
      ("grpcio", "protobuf", "transitions", "psutil", "pyroute2", "cgroupspy")))') \
        || die "importing the stack inside the rootfs"
    log "stack: $versions"
    case $versions in aarch64\ *) ;; *) die "the rootfs python is not aarch64: $versions" ;; esac
    # -p no:cacheprovider: nothing written into the copied checkout; the suite's own timeouts
    # are generous enough for the ~6x slower emulated Python.
    # A hang under emulation must not eat CI's budget: the whole suite gets 40 minutes.
    timeout --kill-after=30 "${AOS_SM_QEMU_USER_TIMEOUT:-2400}" \
        chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        AOS_SM_EMULATED=1 GRPC_ENABLE_FORK_SUPPORT=false \
        /bin/sh -c 'cd /opt/aos-sm && exec python3 -m pytest -q -p no:cacheprovider' \
        || die "the test suite failed (or timed out) under qemu-user (arm64, Debian bookworm's packages)"
    unmount_all
}

# --- boot test ----------------------------------------------------------------------------------
BOOT=$CACHE/boot                   # rebuilt every run: initramfs, root disk, console log
# overlay: an instance's read-only root (the boot test starts one, for the VLAN check).
BOOT_MODULES="virtio_mmio virtio_blk virtio_net crc32c_generic ext4 overlay"
# The network manager's kernel parts (NETWORK.md "prerequisites"); the root disk has no modules
# to autoload from, so they are loaded from the initramfs too. 8021q is what this machine's own
# kernel lacks: the boot test is where the VLAN link is checked. A module this kernel builds in
# (or lacks) is logged, not fatal: the agent's prerequisite CoreAlert then says what is missing.
NET_MODULES="8021q bridge veth nf_tables nft_chain_nat nft_masq nft_ct nft_quota nft_objref sch_tbf sch_ingress act_mirred cls_u32 ifb"
BOOT_TIMEOUT=${AOS_SM_BOOT_TIMEOUT:-1080}   # seconds from qemu start; the brief allows 20 minutes
# The board's busybox-init script: the one the Buildroot package installs.
BOARD_INIT_SCRIPT=$PROJECT/packaging/S95aos-sm

# Put a file into the hard-linked staging copy: unlink first, never write through a link into
# the cached rootfs.
put() {
    local src=$1 dest=$2 mode=$3
    rm -f "$dest"
    install -D -m "$mode" "$src" "$dest"
}

boot_test() {
    [ -x "$PROJECT/.venv/bin/python" ] \
        || die "boot-test: the host-side CM runs from the project's .venv: run the README's test command first"
    mount_chroot "$ROOTFS"
    project_into_rootfs
    unmount_all
    remove_tree "$BOOT"
    mkdir -p "$BOOT/initramfs/bin" "$BOOT/initramfs/modules"

    # initramfs: busybox-static from the rootfs, the driver modules from the kernel .deb.
    local kver module
    kver=$(ls "$KERNEL_DIR/lib/modules")
    cp "$ROOTFS/bin/busybox" "$BOOT/initramfs/bin/busybox"
    depmod -b "$KERNEL_DIR" "$kver" || die "depmod of $kver"
    for module in $BOOT_MODULES $NET_MODULES; do
        case " $NET_MODULES " in
            *" $module "*) modprobe -d "$KERNEL_DIR" -S "$kver" --show-depends "$module" \
                               || log "kernel $kver: no module $module (built in, or missing)" ;;
            *) modprobe -d "$KERNEL_DIR" -S "$kver" --show-depends "$module" \
                   || die "kernel $kver has no module $module" ;;
        esac
    done | awk '$1 == "insmod" && !seen[$2]++ {print $2}' | while read -r module; do
        cp "$module" "$BOOT/initramfs/modules/"
        basename "$module" >> "$BOOT/initramfs/modules/load-order"
    done
    [ -s "$BOOT/initramfs/modules/load-order" ] || die "no modules resolved for the initramfs"
    install -m 755 .ci/arm64/initramfs-init "$BOOT/initramfs/init"
    (cd "$BOOT/initramfs" && find . | cpio -o -H newc --quiet | gzip -1) > "$BOOT/initramfs.cpio.gz" \
        || die "packing the initramfs"

    # The root disk: the same rootfs (hard-linked copy), with busybox init and the board's init
    # scripts on top.
    local staging=$BOOT/root init_script=$BOARD_INIT_SCRIPT
    cp -al "$ROOTFS" "$staging" || die "staging the root disk"
    [ -f "$init_script" ] || die "no board init script at $init_script"
    rm -f "$staging/sbin/init"
    ln -s /bin/busybox "$staging/sbin/init"
    put .ci/arm64/inittab "$staging/etc/inittab" 644
    put .ci/arm64/rcS "$staging/etc/init.d/rcS" 755
    put .ci/arm64/rcK "$staging/etc/init.d/rcK" 755
    put .ci/arm64/S40network "$staging/etc/init.d/S40network" 755
    put "$init_script" "$staging/etc/init.d/S95aos-sm" 755
    put .ci/arm64/S99probe-console "$staging/etc/init.d/S99probe-console" 755
    rm -f "$staging/usr/bin/aos-sm"
    ln -s /usr/local/bin/aos-sm "$staging/usr/bin/aos-sm"   # where a Buildroot image has it
    echo aos-a53 > "$BOOT/hostname" && put "$BOOT/hostname" "$staging/etc/hostname" 644
    printf '{"nodeId": "qemu-a53", "cmServerURL": "10.0.2.100:8093", "tlsMode": "plaintext",\n %s\n' \
        '"workingDir": "/var/aos/servicemanager"}' > "$BOOT/aos-sm.json"
    # Where packaging/S95aos-sm reads it by default, as on a board.
    put "$BOOT/aos-sm.json" "$staging/etc/aos/aos_servicemanager.cfg" 644
    local size
    size=$(( $(du -sm "$staging" | cut -f1) + 256 ))
    mke2fs -q -t ext4 -L aos-root -d "$staging" "$BOOT/root.img" "${size}M" \
        || die "mke2fs of the root disk"
    remove_tree "$staging"

    log "booting $(cat "$KERNEL_DIR/PACKAGE") on qemu-system-aarch64 -cpu cortex-a53 (console: $BOOT/console.log)"
    timeout --kill-after=30 $((BOOT_TIMEOUT + 60)) "$PROJECT/.venv/bin/python" .ci/arm64/boot_check.py \
        --kernel "$KERNEL_DIR/boot/vmlinuz-$kver" --initrd "$BOOT/initramfs.cpio.gz" \
        --disk "$BOOT/root.img" --console "$BOOT/console.log" --timeout "$BOOT_TIMEOUT" \
        --busybox "$ROOTFS/bin/busybox" || {
        log "guest console (tail of $BOOT/console.log):"
        tail -60 "$BOOT/console.log" >&2 || true
        die "boot test: the agent on qemu-system-aarch64 did not register as expected"
    }
    rm -f "$BOOT/root.img"   # 600 MB, rebuilt every run
}

# --- the container image --------------------------------------------------------------------------
# buildah's storage lives in the cache too (layers are reused when warm). overlay works on this
# kind of host; AOS_SM_STORAGE_DRIVER=vfs where it does not.
BUILDAH=(buildah --root "$CACHE/containers/storage" --runroot "$CACHE/containers/run"
         --storage-driver "${AOS_SM_STORAGE_DRIVER:-overlay}")
image() {
    [ -e "$ENTRY/.complete" ] || die "no rootfs: run '.ci/arm64.sh rootfs' first"
    local key ctr
    key=$("${BUILDAH[@]}" inspect --type image --format '{{index .ImageAnnotations "org.aos-sm.rootfs"}}' \
        "$IMAGE_BASE" 2>/dev/null || true)
    if [ "$key" != "$KEY" ]; then
        log "importing $BASE_TAR as $IMAGE_BASE (linux/arm64)"
        ctr=$("${BUILDAH[@]}" from --pull=never scratch) || die "buildah from scratch"
        "${BUILDAH[@]}" add --quiet "$ctr" "$BASE_TAR" / || die "buildah add of the base rootfs"
        "${BUILDAH[@]}" config --os linux --arch arm64 --variant v8 --cmd /bin/bash \
            --annotation "org.aos-sm.rootfs=$KEY" "$ctr" || die "buildah config of the base"
        "${BUILDAH[@]}" commit --quiet --rm "$ctr" "$IMAGE_BASE" >/dev/null || die "buildah commit of the base"
    fi
    # --secret: the host's CA bundle for pip in the builder stage, so that a TLS-intercepting
    # proxy the host trusts (as in CI's sandbox) works inside the build as well.
    log "buildah bud Dockerfile.arm64 (log: $CACHE/image-build.log)"
    "${BUILDAH[@]}" bud --platform linux/arm64 --pull=never --isolation chroot --layers \
        --secret id=pip-ca,src=/etc/ssl/certs/ca-certificates.crt \
        -f Dockerfile.arm64 -t "$IMAGE" . > "$CACHE/image-build.log" 2>&1 \
        || { tail -40 "$CACHE/image-build.log" >&2; die "buildah bud of Dockerfile.arm64"; }
    grep -E '^(\[[0-9]/[0-9]\] )?STEP|^--> Using cache' "$CACHE/image-build.log" >&2 || true
    "${BUILDAH[@]}" images "$IMAGE" >&2
    # The image once, under qemu-user: the agent's probe must see aarch64.
    ctr=$("${BUILDAH[@]}" from --pull=never "$IMAGE") || die "buildah from $IMAGE"
    local probe user
    probe=$("${BUILDAH[@]}" run --isolation chroot "$ctr" -- aos-sm probe --json 2>/dev/null) \
        || { "${BUILDAH[@]}" rm "$ctr" >/dev/null; die "aos-sm probe --json fails in $IMAGE"; }
    user=$("${BUILDAH[@]}" run --isolation chroot "$ctr" -- id -un 2>/dev/null || true)
    "${BUILDAH[@]}" run --isolation chroot "$ctr" -- aos-sm --help >/dev/null 2>&1 \
        || { "${BUILDAH[@]}" rm "$ctr" >/dev/null; die "aos-sm --help fails in $IMAGE"; }
    "${BUILDAH[@]}" rm "$ctr" >/dev/null
    printf '%s' "$probe" | python3 -c 'import json, sys
d = json.load(sys.stdin)
arch = d["arch"]  # the image has no OCI runtime, so SMInfo rightly registers none
assert (arch["architecture"], arch["machine"]) == ("arm64", "aarch64"), arch
print("[arm64] image probe: arch", arch["architecture"], arch.get("variant", ""), "-", len(d["cpus"]), "cpus")' \
        >&2 || die "aos-sm probe --json in $IMAGE does not report arm64 (uname aarch64)"
    [ "$user" = aos ] || die "$IMAGE runs as '$user', expected the non-root user aos"
    log "image $IMAGE: aos-sm runs as user $user on arm64"
}

main() {
    local step=${1:-all}
    case $step in
        setup|rootfs|qemu-user-tests|boot-test|image|all) ;;
        *) die "unknown step: $step (setup|rootfs|qemu-user-tests|boot-test|image|all)" ;;
    esac
    # Host tools first (a no-op once installed); every arm64 step needs arm64 binaries to run.
    # Not through `timed`: its status is the skip decision.
    local t0=$SECONDS
    log "== setup"
    if setup; then
        log "== setup: done in $((SECONDS - t0)) s"
    else
        local why="qemu-aarch64 cannot be registered with binfmt_misc on this host (no binfmt_misc \
mount, or no permission to register): arm64 binaries cannot run"
        [ "${AOS_SM_ARM64_REQUIRED:-0}" = 1 ] && die "$why"
        log "SKIPPED the arm64 steps because $why"
        exit 0
    fi
    case $step in
        setup) ;;
        rootfs) timed rootfs rootfs ;;
        qemu-user-tests) timed qemu-user-tests qemu_user_tests ;;
        boot-test) timed boot-test boot_test ;;
        image) timed image image ;;
        all)
            timed rootfs rootfs
            timed qemu-user-tests qemu_user_tests
            timed boot-test boot_test
            timed image image
            ;;
    esac
}
# Sourced (the tests do, to check the skip decision), it only defines its functions.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi
