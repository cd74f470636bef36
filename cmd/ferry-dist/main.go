// Command ferry-dist builds ferry's release artifacts: a static binary for
// each board architecture and a .deb and an .rpm of each, in dist/.
//
//	go run ./cmd/ferry-dist            # every target, binaries and packages
//	go run ./cmd/ferry-dist -targets arm64,armv7 -out /tmp/dist
//
// Binaries are built with CGO_ENABLED=0, -trimpath and stripped, stamped
// with the version, the commit and the commit's time (main.version,
// main.commit, main.date), which `ferry version` prints. Every time in the
// artifacts is the commit's time, so the same commit builds the same
// bytes. Packages are made with nfpm as a library: nothing to install.
//
// Each package holds /usr/bin/ferry, the systemd unit, the commented
// default configuration /etc/ferry/ferry.yaml (a conffile: an upgrade
// never replaces the operator's file), the state directory and the
// maintainer scripts from packaging/scripts. The tool prints a table of
// sizes and writes dist/SHA256SUMS. It must run from the repository root.
//
// This program is not part of ferry's binary: cmd/ferry must not import
// nfpm (CI checks it).
package main

import (
	"bytes"
	"crypto/sha256"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/deb" // registers the deb packager
	"github.com/goreleaser/nfpm/v2/files"
	_ "github.com/goreleaser/nfpm/v2/rpm" // registers the rpm packager
)

// target is one architecture ferry is built and packaged for.
type target struct {
	Name     string // as in file names: amd64, arm64, armv7, armv6, riscv64
	GOARCH   string
	GOARM    string
	NFPMArch string // nfpm's name, which it maps to deb's and rpm's
}

var targets = []target{
	{"amd64", "amd64", "", "amd64"},
	{"arm64", "arm64", "", "arm64"},
	{"armv7", "arm", "7", "arm7"},
	{"armv6", "arm", "6", "arm6"},
	{"riscv64", "riscv64", "", "riscv64"},
}

const maintainer = "ferry maintainers <maintainers@ferry-edge.invalid>"

// maxBinary bounds the size of every binary: gateways have little flash.
const maxBinary = 20 << 20

// stamp is what identifies a build.
type stamp struct {
	Version string    // semver without "v": 1.2.3, or 0.0.0-dev.<time>.g<commit>
	Commit  string    // full hash, "-dirty" appended for a modified tree
	Time    time.Time // the commit's time, UTC
}

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "ferry-dist:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("ferry-dist", flag.ContinueOnError)
	out := fs.String("out", "dist", "output directory (emptied first)")
	names := fs.String("targets", "all", "comma-separated targets: "+targetNames()+", or all")
	version := fs.String("version", "", "version to stamp; default from git: the v* tag at HEAD, else 0.0.0-dev.<commit time>.g<commit>")
	noPackages := fs.Bool("binaries-only", false, "build the binaries, no packages")
	if err := fs.Parse(args); err != nil {
		return err
	}
	sel, err := selectTargets(*names)
	if err != nil {
		return err
	}
	st, err := gitStamp()
	if err != nil {
		return err
	}
	if *version != "" {
		st.Version = strings.TrimPrefix(*version, "v")
	}
	if err := os.RemoveAll(*out); err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "ferry %s, commit %s, date %s\n", st.Version, st.Commit, st.Time.Format(time.RFC3339))

	var artifacts []string
	tw := tabwriter.NewWriter(stdout, 0, 8, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "target\tbinary\t.deb\t.rpm\t")
	for _, t := range sel {
		bin := filepath.Join(*out, "ferry-linux-"+t.Name)
		if err := build(t, st, bin); err != nil {
			return err
		}
		artifacts = append(artifacts, bin)
		row := []string{t.Name, size(bin), "-", "-"}
		if !*noPackages {
			for i, format := range []string{"deb", "rpm"} {
				pkg := filepath.Join(*out, PackageName(st.Version, t.Name, format))
				if err := writePackage(format, t, st, bin, pkg); err != nil {
					return err
				}
				artifacts = append(artifacts, pkg)
				row[2+i] = size(pkg)
			}
		}
		fmt.Fprintln(tw, strings.Join(row, "\t")+"\t")
	}
	tw.Flush()
	return writeSums(filepath.Join(*out, "SHA256SUMS"), artifacts)
}

func targetNames() string {
	var s []string
	for _, t := range targets {
		s = append(s, t.Name)
	}
	return strings.Join(s, ",")
}

func selectTargets(names string) ([]target, error) {
	if names == "all" {
		return targets, nil
	}
	var sel []target
	for _, n := range strings.Split(names, ",") {
		i := slices.IndexFunc(targets, func(t target) bool { return t.Name == n })
		if i < 0 {
			return nil, fmt.Errorf("-targets: unknown target %q (want %s)", n, targetNames())
		}
		sel = append(sel, targets[i])
	}
	return sel, nil
}

// PackageName is the file name of ferry's package of format ("deb" or
// "rpm") for target. Debian calls armv6 and armv7 both armhf, so the
// names carry ferry's target name instead.
func PackageName(version, target, format string) string {
	return fmt.Sprintf("ferry_%s_linux_%s.%s", version, target, format)
}

// gitStamp reads the version, commit and commit time from git.
func gitStamp() (stamp, error) {
	var st stamp
	commit, err := git("rev-parse", "HEAD")
	if err != nil {
		return st, err
	}
	ct, err := git("log", "-1", "--format=%ct")
	if err != nil {
		return st, err
	}
	sec, err := strconv.ParseInt(ct, 10, 64)
	if err != nil {
		return st, fmt.Errorf("git commit time %q: %w", ct, err)
	}
	st.Commit, st.Time = commit, time.Unix(sec, 0).UTC()
	if status, err := git("status", "--porcelain", "--untracked-files=no"); err == nil && status != "" {
		st.Commit += "-dirty"
	}
	if tag, err := git("describe", "--tags", "--exact-match", "--match", "v[0-9]*", "HEAD"); err == nil {
		st.Version = strings.TrimPrefix(tag, "v")
	} else {
		st.Version = fmt.Sprintf("0.0.0-dev.%s.g%s", st.Time.Format("20060102150405"), commit[:7])
	}
	return st, nil
}

func git(args ...string) (string, error) {
	var stderr bytes.Buffer
	cmd := exec.Command("git", args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("git %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(string(out)), nil
}

// build cross-compiles cmd/ferry for t into bin.
func build(t target, st stamp, bin string) error {
	ldflags := fmt.Sprintf("-s -w -buildid= -X main.version=%s -X main.commit=%s -X main.date=%s",
		st.Version, st.Commit, st.Time.Format(time.RFC3339))
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", ldflags, "-o", bin, "./cmd/ferry")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+t.GOARCH, "GOARM="+t.GOARM, "GOFLAGS=-buildvcs=false")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("build %s: %w", t.Name, err)
	}
	fi, err := os.Stat(bin)
	if err != nil {
		return err
	}
	if fi.Size() > maxBinary {
		return fmt.Errorf("build %s: the binary is %d bytes, over the %d byte bound", t.Name, fi.Size(), maxBinary)
	}
	return os.Chtimes(bin, st.Time, st.Time)
}

// Contents lists what a package installs; bin is the binary's path.
// Exported for the package test, which checks the .deb against it.
func Contents(bin string) files.Contents {
	file := func(src, dst string, mode os.FileMode, typ string) *files.Content {
		return &files.Content{Source: src, Destination: dst, Type: typ, FileInfo: &files.ContentFileInfo{Mode: mode}}
	}
	dir := func(dst string, mode os.FileMode) *files.Content {
		return &files.Content{Destination: dst, Type: files.TypeDir, FileInfo: &files.ContentFileInfo{Mode: mode}}
	}
	return files.Contents{
		file(bin, "/usr/bin/ferry", 0o755, ""),
		file("packaging/ferry.service", "/usr/lib/systemd/system/ferry.service", 0o644, ""),
		dir("/etc/ferry", 0o755),
		// The ferry service's dynamic user must read it: secrets belong in
		// credentials or password files (see the README).
		file("packaging/ferry.yaml", "/etc/ferry/ferry.yaml", 0o644, files.TypeConfigNoReplace),
		file("packaging/copyright", "/usr/share/doc/ferry/copyright", 0o644, ""),
		{Source: "packaging/lintian-overrides", Destination: "/usr/share/lintian/overrides/ferry", Packager: "deb",
			FileInfo: &files.ContentFileInfo{Mode: 0o644}},
		// The state directory as systemd lays it out for a service with
		// DynamicUser=yes and StateDirectory=ferry: the data lives under
		// the root-only /var/lib/private, /var/lib/ferry points to it.
		dir("/var/lib/private", 0o700),
		dir("/var/lib/private/ferry", 0o700),
		{Source: "private/ferry", Destination: "/var/lib/ferry", Type: files.TypeSymlink},
	}
}

// writePackage writes the format ("deb" or "rpm") package of binary bin
// for t to path.
func writePackage(format string, t target, st stamp, bin, path string) error {
	changelog, err := writeChangelog(st)
	if err != nil {
		return err
	}
	defer os.Remove(changelog)
	info := nfpm.WithDefaults(&nfpm.Info{
		Name:        "ferry",
		Arch:        t.NFPMArch,
		Platform:    "linux",
		Version:     st.Version,
		Section:     "net",
		Priority:    "optional",
		Maintainer:  maintainer,
		Description: "MQTT to Kafka forwarder with a durable on-disk buffer\nferry subscribes to a local MQTT broker, stores every message durably\nand forwards the messages in order to Kafka whenever the uplink works.",
		Vendor:      "ferry",
		Homepage:    "https://github.com/ferry-edge/ferry",
		License:     "see /usr/share/doc/ferry/copyright",
		MTime:       st.Time,
		Changelog:   changelog,
		Overridables: nfpm.Overridables{
			Contents: Contents(bin),
			Umask:    0o022,
			Scripts: nfpm.Scripts{
				PostInstall: "packaging/scripts/postinstall.sh",
				PreRemove:   "packaging/scripts/preremove.sh",
				PostRemove:  "packaging/scripts/postremove.sh",
			},
			Deb: nfpm.Deb{Compression: "xz"},
			RPM: nfpm.RPM{
				Compression: "xz",
				BuildHost:   "ferry-dist", // not this machine's name: reproducible
				Group:       "System Environment/Daemons",
				Summary:     "MQTT to Kafka forwarder with a durable on-disk buffer",
			},
		},
	})
	if err := nfpm.Validate(info); err != nil {
		return fmt.Errorf("package %s %s: %w", t.Name, format, err)
	}
	pkgr, err := nfpm.Get(format)
	if err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pkgr.Package(info, f); err != nil {
		f.Close()
		return fmt.Errorf("package %s %s: %w", t.Name, format, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Chtimes(path, st.Time, st.Time)
}

// writeChangelog writes a one-entry changelog (chglog's YAML, from which
// nfpm makes Debian's changelog.gz) for st to a temporary file.
func writeChangelog(st stamp) (string, error) {
	f, err := os.CreateTemp("", "ferry-changelog-*.yml")
	if err != nil {
		return "", err
	}
	_, err = fmt.Fprintf(f, `- semver: %s
  date: %s
  packager: %s
  deb:
    urgency: medium
    distributions: [stable]
  changes:
    - commit: %s
      note: ferry %s, from commit %.12s
`, st.Version, st.Time.Format(time.RFC3339), maintainer, strings.TrimSuffix(st.Commit, "-dirty"), st.Version, st.Commit)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return f.Name(), err
}

func size(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return "?"
	}
	return fmt.Sprintf("%.1f MB", float64(fi.Size())/1e6)
}

func writeSums(path string, artifacts []string) error {
	var b strings.Builder
	for _, a := range artifacts {
		data, err := os.ReadFile(a)
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%x  %s\n", sha256.Sum256(data), filepath.Base(a))
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}
