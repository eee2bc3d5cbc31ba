package nestedkvm

import (
	"bufio"
	"bytes"
	"debug/elf"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// PinnedKernel is the Debian kernel L1 boots when apt offers it (checked
// with kvm_amd, 9p and the VMM's tests); otherwise the newest offered
// linux-image-*-amd64-unsigned is used.
const PinnedKernel = "6.1.0-48"

// moduleLists are the modules init.sh loads, by list, with their
// dependencies resolved in front of them. "kvm" comes first so that a
// refusal is told apart from the rest.
var moduleLists = []struct {
	name    string
	modules []string
}{
	{"kvm", []string{"kvm_amd"}},
	{"base", []string{"virtio_pci", "virtio_console", "9pnet_virtio", "9p", "overlay", "fuse", "tun"}},
}

// Kernel is a kernel in the cache: Dir holds vmlinuz and modules/.
type Kernel struct {
	Version string // such as 6.1.0-48
	Dir     string
}

// Vmlinuz is the kernel image's path.
func (k Kernel) Vmlinuz() string { return filepath.Join(k.Dir, "vmlinuz") }

func kernelPackage(version string) string { return "linux-image-" + version + "-amd64-unsigned" }

// EnsureKernel returns the L1 kernel, from cacheDir when it is there (then
// apt is not asked), else fetched with apt-get download: PinnedKernel if
// apt offers it, else the newest offered. logf tells about a download.
func EnsureKernel(cacheDir string, logf func(string, ...any)) (Kernel, error) {
	if k := (Kernel{PinnedKernel, filepath.Join(cacheDir, PinnedKernel)}); k.complete() {
		return k, nil
	}
	offered, err := aptKernels()
	if err != nil {
		return Kernel{}, fmt.Errorf("%w: %v", ErrKernel, err)
	}
	version := PinnedKernel
	if !slices.Contains(offered, version) {
		if len(offered) == 0 {
			return Kernel{}, fmt.Errorf("%w: apt offers no linux-image-*-amd64-unsigned (run apt-get update?)", ErrKernel)
		}
		version = offered[len(offered)-1]
	}
	k := Kernel{version, filepath.Join(cacheDir, version)}
	if k.complete() {
		return k, nil
	}
	logf("fetching %s with apt-get download", kernelPackage(version))
	if err := fetchKernel(k); err != nil {
		return Kernel{}, fmt.Errorf("%w: %s: %v", ErrKernel, kernelPackage(version), err)
	}
	return k, nil
}

// complete reports whether the cache holds the image and every module L1 loads.
func (k Kernel) complete() bool {
	if _, err := os.Stat(k.Vmlinuz()); err != nil {
		return false
	}
	_, err := k.loadOrder()
	return err == nil
}

// loadOrder resolves moduleLists against the cached modules: list name to
// .ko file names in load order.
func (k Kernel) loadOrder() (map[string][]string, error) {
	mods, err := scanModules(filepath.Join(k.Dir, "modules"))
	if err != nil {
		return nil, err
	}
	lists := map[string][]string{}
	done := map[string]bool{}
	for _, l := range moduleLists {
		names, err := mods.order(l.modules, done)
		if err != nil {
			return nil, err
		}
		for _, n := range names {
			lists[l.name] = append(lists[l.name], filepath.Base(mods.files[n]))
		}
	}
	return lists, nil
}

var kernelName = regexp.MustCompile(`^linux-image-(\d+\.\d+\.\d+-\d+)-amd64-unsigned$`)

// aptKernels lists the versions of linux-image-*-amd64-unsigned apt offers,
// oldest first. With no package lists it runs apt-get update once (root).
func aptKernels() ([]string, error) {
	if _, err := exec.LookPath("apt-get"); err != nil {
		return nil, fmt.Errorf("not cached and no apt-get to fetch it")
	}
	search := func() []string {
		out, _ := exec.Command("apt-cache", "search", "--names-only", `^linux-image-[0-9.]+-[0-9]+-amd64-unsigned$`).Output()
		var vs []string
		for _, line := range strings.Split(string(out), "\n") {
			if m := kernelName.FindStringSubmatch(strings.Fields(line + " -")[0]); m != nil {
				vs = append(vs, m[1])
			}
		}
		slices.SortFunc(vs, compareVersions)
		return vs
	}
	vs := search()
	if len(vs) == 0 && os.Geteuid() == 0 {
		if err := runQuiet(exec.Command("apt-get", "update", "-qq")); err != nil {
			return nil, err
		}
		vs = search()
	}
	return vs, nil
}

// compareVersions orders versions such as 6.1.0-9 < 6.1.0-48 numerically.
func compareVersions(a, b string) int {
	split := func(s string) []int {
		var n []int
		for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == '.' || r == '-' }) {
			v, _ := strconv.Atoi(f)
			n = append(n, v)
		}
		return n
	}
	return slices.Compare(split(a), split(b))
}

// fetchKernel downloads and unpacks the package into a temporary directory
// beside k.Dir, keeps vmlinuz, the modules L1 loads and modules.builtin,
// and renames the result to k.Dir.
func fetchKernel(k Kernel) error {
	if err := os.MkdirAll(filepath.Dir(k.Dir), 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(k.Dir), ".fetch-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	dl := exec.Command("apt-get", "download", "-qq", kernelPackage(k.Version))
	dl.Dir = tmp
	if err := runQuiet(dl); err != nil {
		return err
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return fmt.Errorf("apt-get download left %d .deb files", len(debs))
	}
	x := filepath.Join(tmp, "x")
	if err := runQuiet(exec.Command("dpkg-deb", "-x", debs[0], x)); err != nil {
		return err
	}
	out := filepath.Join(tmp, "out")
	if err := os.MkdirAll(filepath.Join(out, "modules"), 0o755); err != nil {
		return err
	}
	release := k.Version + "-amd64"
	if err := copyFile(filepath.Join(x, "boot", "vmlinuz-"+release), filepath.Join(out, "vmlinuz")); err != nil {
		return err
	}
	tree := filepath.Join(x, "lib", "modules", release)
	if err := copyFile(filepath.Join(tree, "modules.builtin"), filepath.Join(out, "modules", "modules.builtin")); err != nil {
		return err
	}
	mods, err := scanModules(tree)
	if err != nil {
		return err
	}
	done := map[string]bool{}
	for _, l := range moduleLists {
		names, err := mods.order(l.modules, done)
		if err != nil {
			return err
		}
		for _, n := range names {
			if err := copyFile(mods.files[n], filepath.Join(out, "modules", filepath.Base(mods.files[n]))); err != nil {
				return err
			}
		}
	}
	os.RemoveAll(k.Dir) // a partial one
	return os.Rename(out, k.Dir)
}

func copyFile(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, 0o644)
}

// moduleSet is a tree of kernel modules: name (with underscores, as the
// kernel spells it) to .ko path, and the names built into the kernel.
type moduleSet struct {
	files   map[string]string
	builtin map[string]bool
}

func modName(file string) string {
	return strings.ReplaceAll(strings.TrimSuffix(filepath.Base(file), ".ko"), "-", "_")
}

// scanModules indexes the .ko files below dir and dir/modules.builtin.
func scanModules(dir string) (moduleSet, error) {
	s := moduleSet{files: map[string]string{}, builtin: map[string]bool{}}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".ko") {
			s.files[modName(p)] = p
		}
		return err
	})
	if err != nil {
		return s, err
	}
	b, err := os.ReadFile(filepath.Join(dir, "modules.builtin"))
	if err != nil {
		return s, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		s.builtin[modName(sc.Text())] = true
	}
	return s, nil
}

// order returns the modules to load for targets, each after its
// dependencies ("depends=" in its .modinfo), skipping built-in ones and
// those in done, which it extends.
func (s moduleSet) order(targets []string, done map[string]bool) ([]string, error) {
	var out []string
	var visit func(name string, path []string) error
	visit = func(name string, path []string) error {
		if done[name] || s.builtin[name] {
			return nil
		}
		if slices.Contains(path, name) {
			return fmt.Errorf("module dependency cycle: %v", append(path, name))
		}
		file, ok := s.files[name]
		if !ok {
			return fmt.Errorf("module %s: not in the kernel package", name)
		}
		deps, err := modDepends(file)
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d, append(path, name)); err != nil {
				return err
			}
		}
		done[name] = true
		out = append(out, name)
		return nil
	}
	for _, t := range targets {
		if err := visit(t, nil); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// modDepends reads "depends=a,b" from a module's .modinfo section.
func modDepends(file string) ([]string, error) {
	f, err := elf.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("%s: no .modinfo", file)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			if len(v) == 0 {
				return nil, nil
			}
			return strings.Split(string(v), ","), nil
		}
	}
	return nil, nil
}
