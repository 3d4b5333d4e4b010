package docs

import (
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// goSMTPModule is the library whose functions docs/internals.md names with
// the prefix "smtp.".
const goSMTPModule = "github.com/emersion/go-smtp"

// TestInternalsFunctionsExist checks that every function docs/internals.md
// names (see funcRef for the forms) and every Test/Fuzz/Benchmark function
// it cites exists: mailgate's in the repository's Go source, go-smtp's in
// the version go.mod requires.
func TestInternalsFunctionsExist(t *testing.T) {
	root := repoRoot(t)
	idx := newIndex()
	if err := idx.addTree(root, ""); err != nil {
		t.Fatal(err)
	}
	dir := goSMTPDir(t, root)
	if err := idx.addTree(dir, "smtp"); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(filepath.Join(root, "docs", "internals.md"))
	if err != nil {
		t.Fatal(err)
	}
	checked, problems := checkFuncRefs(md, idx)
	for _, p := range problems {
		t.Errorf("docs/internals.md:%s", p)
	}
	t.Logf("%d function references checked in docs/internals.md", checked)
	// The document names well over a hundred; far fewer means the
	// extraction broke, not that the document is right.
	if checked < 100 {
		t.Errorf("only %d function references checked in docs/internals.md", checked)
	}
}

// goSMTPDir is the module cache directory of the go-smtp version go.mod
// requires (downloaded if it is not there yet).
func goSMTPDir(t *testing.T, root string) string {
	t.Helper()
	cmd := exec.Command("go", "mod", "download", "-json", goSMTPModule)
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go mod download %s: %v\n%s", goSMTPModule, err, out)
	}
	var m struct{ Dir, Version string }
	if err := json.Unmarshal(out, &m); err != nil || m.Dir == "" {
		t.Fatalf("go mod download %s: no directory in %s (%v)", goSMTPModule, out, err)
	}
	return m.Dir
}

// index holds the functions and methods of Go packages, by package name.
type index struct {
	funcs   map[string]map[string]bool            // package → function names
	methods map[string]map[string]map[string]bool // package → type → method names
}

func newIndex() *index {
	return &index{funcs: map[string]map[string]bool{}, methods: map[string]map[string]map[string]bool{}}
}

// addTree parses every .go file under dir (test files included; testdata,
// vendor and hidden directories skipped) into the index. pkg, when set,
// replaces the package names found (go-smtp's files are package smtp
// anyway; this keeps a stray example package out).
func (x *index) addTree(dir, pkg string) error {
	fset := token.NewFileSet()
	return filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			name := d.Name()
			if path != dir && (name == "testdata" || name == "vendor" || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_")) {
				return filepath.SkipDir
			}
			if pkg != "" && path != dir {
				return filepath.SkipDir // go-smtp: the package itself, not cmd/
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		name := strings.TrimSuffix(f.Name.Name, "_test")
		if pkg != "" {
			name = pkg
		}
		x.addFile(name, f)
		return nil
	})
}

func (x *index) addFile(pkg string, f *ast.File) {
	for _, decl := range f.Decls {
		fd, ok := decl.(*ast.FuncDecl)
		if !ok {
			continue
		}
		if fd.Recv == nil || len(fd.Recv.List) == 0 {
			if x.funcs[pkg] == nil {
				x.funcs[pkg] = map[string]bool{}
			}
			x.funcs[pkg][fd.Name.Name] = true
			continue
		}
		typ := recvType(fd.Recv.List[0].Type)
		if x.methods[pkg] == nil {
			x.methods[pkg] = map[string]map[string]bool{}
		}
		if x.methods[pkg][typ] == nil {
			x.methods[pkg][typ] = map[string]bool{}
		}
		x.methods[pkg][typ][fd.Name.Name] = true
	}
}

// recvType is the name of a receiver's type: T for T, *T, T[P], *T[P].
func recvType(e ast.Expr) string {
	for {
		switch v := e.(type) {
		case *ast.StarExpr:
			e = v.X
		case *ast.IndexExpr:
			e = v.X
		case *ast.IndexListExpr:
			e = v.X
		case *ast.ParenExpr:
			e = v.X
		case *ast.Ident:
			return v.Name
		default:
			return ""
		}
	}
}

// hasPackage reports whether pkg is the name of an indexed package.
func (x *index) hasPackage(pkg string) bool {
	return x.funcs[pkg] != nil || x.methods[pkg] != nil
}

// hasFunc reports whether pkg (any package when "") declares a function or,
// with anyMethod, a method of that name.
func (x *index) hasFunc(pkg, name string, anyMethod bool) bool {
	for p, fs := range x.funcs {
		if (pkg == "" || p == pkg) && fs[name] {
			return true
		}
	}
	if anyMethod {
		for p, types := range x.methods {
			if pkg != "" && p != pkg {
				continue
			}
			for _, ms := range types {
				if ms[name] {
					return true
				}
			}
		}
	}
	return false
}

// hasMethod reports whether type typ of pkg (any package when "") has the
// method name, with a value or a pointer receiver.
func (x *index) hasMethod(pkg, typ, name string) bool {
	for p, types := range x.methods {
		if (pkg == "" || p == pkg) && types[typ][name] {
			return true
		}
	}
	return false
}

var (
	// [pkg.](*T).m[()] or [pkg.](T).m[()]
	recvRef = regexp.MustCompile(`^(?:([A-Za-z_]\w*)\.)?\((\*?)([A-Za-z_]\w*)\)\.([A-Za-z_]\w*)(\(\))?$`)
	// a, a.b or a.b.c, followed by ()
	callRef = regexp.MustCompile(`^([A-Za-z_]\w*)(?:\.([A-Za-z_]\w*))?(?:\.([A-Za-z_]\w*))?\(\)$`)
	// a test, fuzz test or benchmark cited by name
	testRef = regexp.MustCompile(`^(?:Test|Fuzz|Benchmark)[A-Z_0-9]\w*$`)
)

// funcRef resolves one code span of the document. It returns ok=false when
// the span is not a function reference; otherwise whether it exists. The
// forms:
//
//	name()              a function or method name in any mailgate package
//	(*T).m, (T).m       a method of type T (value or pointer receiver), with or without ()
//	pkg.(*T).m          the same, in package pkg ("smtp" is go-smtp)
//	pkg.F(), T.m()      a function of package pkg, else a method of type T
//	pkg.T.m()           a method of type T in package pkg
//	TestX, FuzzX, BenchmarkX   a function of that name in any mailgate package
func funcRef(span string, x *index) (exists, ok bool) {
	if m := recvRef.FindStringSubmatch(span); m != nil {
		return x.hasMethod(m[1], m[3], m[4]), true
	}
	if m := callRef.FindStringSubmatch(span); m != nil {
		switch {
		case m[2] == "": // name()
			return x.hasFunc("", m[1], true), true
		case m[3] == "": // pkg.F() or T.m()
			if x.hasPackage(m[1]) && x.hasFunc(m[1], m[2], false) {
				return true, true
			}
			return x.hasMethod("", m[1], m[2]), true
		default: // pkg.T.m()
			return x.hasMethod(m[1], m[2], m[3]), true
		}
	}
	if testRef.MatchString(span) {
		return x.hasFunc("", span, false), true
	}
	return false, false
}

// checkFuncRefs resolves every function reference in md's code spans
// (outside fenced blocks) and returns how many it checked and one problem
// ("LINE: `span` …") per reference that does not exist.
func checkFuncRefs(md []byte, x *index) (checked int, problems []string) {
	forProse(md, func(n int, line string) {
		for _, span := range codeSpans(line) {
			exists, ok := funcRef(span, x)
			if !ok {
				continue
			}
			checked++
			if !exists {
				problems = append(problems, fmt.Sprintf("%d: `%s` names no function in the Go source", n, span))
			}
		}
	})
	return checked, problems
}

// TestFuncRef is the resolver's own test, over a small tree of packages.
func TestFuncRef(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"proxy/server.go": `package proxy
type Server struct{}
func (s *Server) handover() {}
func (s Server) Addrs() {}
type gen[T any] struct{}
func (g *gen[T]) get() {}
func newClientConn() {}
`,
		"proxy/server_test.go": "package proxy_test\nimport \"testing\"\nfunc TestHandover(t *testing.T) {}\n",
		"upstream/tx.go": `package upstream
type Router struct{}
func (r *Router) Begin() {}
func AsSMTPError() {}
type upstream struct{}
func (u *upstream) dial() {}
`,
		"policy/decision.go":  "package policy\ntype Decision struct{}\nfunc (d Decision) Enforced() {}\n",
		"testdata/skipped.go": "package skipped\nfunc hidden() {}\n",
	}
	writeTree(t, dir, files)
	x := newIndex()
	if err := x.addTree(dir, ""); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		span       string
		ok, exists bool
	}{
		{"handover()", true, true},
		{"(*Server).handover", true, true},
		{"(*Server).handover()", true, true},
		{"(Server).Addrs", true, true},
		{"(*Server).Addrs", true, true}, // a value method is in *T's method set
		{"Server.Addrs()", true, true},
		{"(*gen).get", true, true},
		{"newClientConn()", true, true},
		{"upstream.(*Router).Begin", true, true},
		{"upstream.AsSMTPError()", true, true},
		{"upstream.(*upstream).dial", true, true},
		{"policy.Decision.Enforced()", true, true},
		{"TestHandover", true, true},
		// Missing, or in the wrong place.
		{"handoff()", true, false},
		{"(*Server).handoff", true, false},
		{"(*Router).handover", true, false},
		{"policy.(*Router).Begin", true, false},
		{"proxy.AsSMTPError()", true, false},
		{"policy.Decision.Accept()", true, false},
		{"hidden()", true, false},
		{"TestHandoff", true, false},
		// Not function references: not checked.
		{"clientConn", false, false},
		{"Server.pending", false, false},
		{"proxy/server.go", false, false},
		{"go test ./...", false, false},
		{"421 4.3.2", false, false},
		{"Testing", false, false},
	} {
		exists, ok := funcRef(tc.span, x)
		if ok != tc.ok || exists != tc.exists {
			t.Errorf("funcRef(%q) = exists %v, ok %v; want exists %v, ok %v", tc.span, exists, ok, tc.exists, tc.ok)
		}
	}

	md := "# Doc\n\n`(*Server).handover` then `newClientConn()`\n\n```\n`gone()` in a code block\n```\n`(*Server).gone` and `Server.pending`\n"
	checked, problems := checkFuncRefs([]byte(md), x)
	if checked != 3 || len(problems) != 1 || !strings.HasPrefix(problems[0], "8: `(*Server).gone`") {
		t.Errorf("checkFuncRefs: checked %d, problems %q; want 3 checked and one problem on line 8", checked, problems)
	}
}
