package main

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// distDir returns a directory holding ferry's packages: $FERRY_DIST_DIR
// (CI builds every target once and passes it), else a fresh build for this
// machine's architecture. The working directory becomes the repository
// root, where ferry-dist runs.
func distDir(t *testing.T) string {
	t.Helper()
	t.Chdir("../..")
	if d := os.Getenv("FERRY_DIST_DIR"); d != "" {
		abs, err := filepath.Abs(d)
		if err != nil {
			t.Fatal(err)
		}
		return abs
	}
	if runtime.GOARCH != "amd64" && runtime.GOARCH != "arm64" && runtime.GOARCH != "riscv64" {
		t.Skipf("no ferry-dist target for %s", runtime.GOARCH)
	}
	out := t.TempDir()
	var log bytes.Buffer
	if err := run([]string{"-out", out, "-targets", runtime.GOARCH}, &log); err != nil {
		t.Fatalf("ferry-dist: %v\n%s", err, log.String())
	}
	t.Logf("%s", log.String())
	return out
}

func requireTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
}

func sh(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestDebContents unpacks every .deb into a throwaway root and checks its
// files, their modes, the conffiles and the maintainer scripts.
func TestDebContents(t *testing.T) {
	requireTools(t, "dpkg-deb")
	dir := distDir(t)
	debs, _ := filepath.Glob(filepath.Join(dir, "*.deb"))
	if len(debs) == 0 {
		t.Fatalf("no .deb in %s", dir)
	}
	for _, deb := range debs {
		t.Run(filepath.Base(deb), func(t *testing.T) {
			root, ctl := t.TempDir(), t.TempDir()
			sh(t, "dpkg-deb", "-x", deb, root)
			sh(t, "dpkg-deb", "-e", deb, ctl)
			for _, f := range []struct {
				path string
				mode fs.FileMode
			}{
				{"usr/bin/ferry", 0o755},
				{"usr/lib/systemd/system/ferry.service", 0o644},
				{"etc/ferry", fs.ModeDir | 0o755},
				{"etc/ferry/ferry.yaml", 0o644},
				{"usr/share/doc/ferry/copyright", 0o644},
				{"var/lib/private", fs.ModeDir | 0o700},
				{"var/lib/private/ferry", fs.ModeDir | 0o700},
				{"var/lib/ferry", fs.ModeSymlink | 0o777},
			} {
				fi, err := os.Lstat(filepath.Join(root, f.path))
				if err != nil {
					t.Errorf("%s: %v", f.path, err)
					continue
				}
				if fi.Mode() != f.mode {
					t.Errorf("%s: mode %v, want %v", f.path, fi.Mode(), f.mode)
				}
			}
			if target, err := os.Readlink(filepath.Join(root, "var/lib/ferry")); err != nil || target != "private/ferry" {
				t.Errorf("var/lib/ferry -> %q (%v), want private/ferry: systemd's layout for DynamicUser=yes", target, err)
			}
			unit, _ := os.ReadFile(filepath.Join(root, "usr/lib/systemd/system/ferry.service"))
			if want, _ := os.ReadFile("packaging/ferry.service"); !bytes.Equal(unit, want) {
				t.Error("the packaged unit differs from packaging/ferry.service")
			}
			conffiles, err := os.ReadFile(filepath.Join(ctl, "conffiles"))
			if err != nil || strings.TrimSpace(string(conffiles)) != "/etc/ferry/ferry.yaml" {
				t.Errorf("conffiles %q (%v), want /etc/ferry/ferry.yaml alone", conffiles, err)
			}
			for _, s := range []string{"postinst", "prerm", "postrm"} {
				if fi, err := os.Stat(filepath.Join(ctl, s)); err != nil || fi.Mode()&0o111 == 0 {
					t.Errorf("maintainer script %s missing or not executable (%v)", s, err)
				}
			}
			control, _ := os.ReadFile(filepath.Join(ctl, "control"))
			if !strings.Contains(string(control), "Package: ferry\n") {
				t.Errorf("control:\n%s", control)
			}
		})
	}
}

// TestDebInstallUpgradeRemove follows the README's install path into a
// throwaway root with dpkg --root: install, check the default config,
// edit it, upgrade (the edit survives), remove (the config and the buffer
// stay).
func TestDebInstallUpgradeRemove(t *testing.T) {
	requireTools(t, "dpkg", "dpkg-deb", "systemctl")
	dir := distDir(t)
	debs, _ := filepath.Glob(filepath.Join(dir, "*_linux_"+runtime.GOARCH+".deb"))
	if len(debs) != 1 {
		t.Skipf("no .deb for %s in %s", runtime.GOARCH, dir)
	}
	root := t.TempDir()
	for _, d := range []string{"var/lib/dpkg/info", "var/lib/dpkg/updates"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"var/lib/dpkg/status", "var/lib/dpkg/available"} {
		if err := os.WriteFile(filepath.Join(root, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	dpkg := func(args ...string) string {
		t.Helper()
		return sh(t, "dpkg", append([]string{"--root=" + root, "--force-script-chrootless", "--force-not-root", "--log=/dev/null"}, args...)...)
	}
	out := dpkg("-i", debs[0])
	if !strings.Contains(out, "edit /etc/ferry/ferry.yaml") {
		t.Errorf("first install does not tell what to do next:\n%s", out)
	}
	wants := filepath.Join(root, "etc/systemd/system/multi-user.target.wants/ferry.service")
	if _, err := os.Lstat(wants); err != nil {
		t.Errorf("the service is not enabled: %v", err)
	}
	bin, conf := filepath.Join(root, "usr/bin/ferry"), filepath.Join(root, "etc/ferry/ferry.yaml")
	v := sh(t, bin, "version")
	if !strings.Contains(v, "commit ") || strings.Contains(v, "ferry dev ") {
		t.Errorf("ferry version %q lacks the stamps", v)
	}
	sh(t, bin, "check", "-c", conf)

	// The operator edits the config; ferry buffers something.
	edited := strings.Replace(readFile(t, conf), "brokers: [127.0.0.1:9092]", "brokers: [kafka.example:9092]", 1)
	if err := os.WriteFile(conf, []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "var/lib/private/ferry/buffer.db"), []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}

	// Upgrade to a newer version of the same files.
	newer := filepath.Join(t.TempDir(), "ferry_99.0.0_linux_"+runtime.GOARCH+".deb")
	tg, _ := selectTargets(runtime.GOARCH)
	if err := writePackage("deb", tg[0], stamp{Version: "99.0.0", Commit: "test", Time: time.Unix(1e9, 0).UTC()}, bin, newer); err != nil {
		t.Fatal(err)
	}
	out = dpkg("-i", newer)
	if strings.Contains(out, "edit /etc/ferry/ferry.yaml") {
		t.Errorf("upgrade talks like a first install:\n%s", out)
	}
	if got := readFile(t, conf); got != edited {
		t.Errorf("the upgrade replaced the operator's config:\n%s", got)
	}
	if s := dpkg("-s", "ferry"); !strings.Contains(s, "Version: 99.0.0") {
		t.Errorf("after the upgrade:\n%s", s)
	}

	dpkg("-r", "ferry")
	if _, err := os.Stat(bin); err == nil {
		t.Error("remove left /usr/bin/ferry")
	}
	if _, err := os.Lstat(wants); err == nil {
		t.Error("remove left the service enabled")
	}
	if got := readFile(t, conf); got != edited {
		t.Error("remove (not purge) took the config")
	}
	if _, err := os.Stat(filepath.Join(root, "var/lib/private/ferry/buffer.db")); err != nil {
		t.Errorf("remove took the buffer: %v", err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestRPMContents checks every .rpm's files, modes, the config file's
// noreplace flag and the scriptlets, as rpm itself reads them.
func TestRPMContents(t *testing.T) {
	requireTools(t, "rpm")
	dir := distDir(t)
	rpms, _ := filepath.Glob(filepath.Join(dir, "*.rpm"))
	if len(rpms) == 0 {
		t.Fatalf("no .rpm in %s", dir)
	}
	want := map[string]string{ // path: mode flags link
		"/etc/ferry":                            "drwxr-xr-x  ",
		"/etc/ferry/ferry.yaml":                 "-rw-r--r-- cn ", // config, noreplace
		"/usr/bin/ferry":                        "-rwxr-xr-x  ",
		"/usr/lib/systemd/system/ferry.service": "-rw-r--r--  ",
		"/usr/share/doc/ferry/copyright":        "-rw-r--r--  ",
		"/var/lib/private":                      "drwx------  ",
		"/var/lib/private/ferry":                "drwx------  ",
	}
	for _, pkg := range rpms {
		t.Run(filepath.Base(pkg), func(t *testing.T) {
			out := sh(t, "rpm", "-qp", "--qf", `[%{FILENAMES}\t%{FILEMODES:perms} %{FILEFLAGS:fflags} %{FILELINKTOS}\n]`, pkg)
			got := map[string]string{}
			for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
				path, rest, _ := strings.Cut(line, "\t")
				got[path] = rest
			}
			for path, w := range want {
				if got[path] != w {
					t.Errorf("%s: %q, want %q", path, got[path], w)
				}
			}
			if l := got["/var/lib/ferry"]; !strings.HasSuffix(l, " private/ferry") {
				t.Errorf("/var/lib/ferry: %q, want a symlink to private/ferry", l)
			}
			scripts := sh(t, "rpm", "-qp", "--scripts", pkg)
			for _, s := range []string{"postinstall scriptlet", "preuninstall scriptlet", "postuninstall scriptlet", "systemctl enable ferry.service"} {
				if !strings.Contains(scripts, s) {
					t.Errorf("scriptlets lack %q", s)
				}
			}
		})
	}
}
