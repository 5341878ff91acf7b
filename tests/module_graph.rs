//! No import cycles between modules: the project's rule, checked.
//!
//! When `gateway` uses `session::connection` and `session::connection` uses `gateway`, neither
//! can be read, tested or changed without the other. This test builds the library's module
//! graph and fails on every cycle in it:
//!
//! - **Modules.** Every `.rs` file under `src/` is one: `src/lib.rs` is the crate root,
//!   `src/a.rs` and `src/a/mod.rs` are `a`, `src/a/b.rs` is `a::b`; `src/main.rs` and
//!   `src/bin/**` are crates of their own and left out. An inline `mod x { .. }` is a module
//!   too. The code `tonic::include_proto!` includes from `OUT_DIR` belongs to the module that
//!   includes it, since it names this crate's items as well (the edges among the modules it
//!   generates are the generator's layout, not the project's, and left out).
//! - **Edges.** Every path that names an item of this crate, parsed with `syn`: in `use`
//!   trees, in expression, type and pattern paths, and in the tokens of macro invocations. A
//!   path starts at `crate`, `self` or `super`, at a child module, or at a name a `use`
//!   brought in (expanded as that `use` wrote it). It is an edge to the deepest module it
//!   names: `crate::session::handshake::open` is `session::handshake`, `super::Session` in
//!   `session/connection.rs` is `session`. Declaring a child (`pub mod child;`) is no edge,
//!   using it (`pub use child::X`) is; edges to the module itself, `#[cfg(test)]` items and
//!   `mod tests` blocks do not count.
//! - **Cycles.** The strongly connected components of the graph (Tarjan). The failure lists
//!   each cycle as module paths (`gateway -> session::connection -> gateway`) and the code
//!   behind every edge in it.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    path::Path,
};

use syn::{
    buffer::Cursor,
    parse::{ParseStream, Parser},
    visit::{self, Visit},
    Attribute, Item, Meta, UseTree,
};

#[test]
fn there_are_no_import_cycles_between_modules() {
    let graph = ModuleGraph::from_sources(&library_sources());
    let report = graph.cycle_report();
    assert!(report.is_none(), "{}", report.unwrap_or_default());
}

/// Guards the check against silently seeing less than the whole library.
#[test]
fn every_library_file_is_a_module_of_the_graph() {
    let sources = library_sources();
    let graph = ModuleGraph::from_sources(&sources);
    assert!(
        graph.undeclared.is_empty(),
        "files no module declares: {:?}",
        graph.undeclared
    );
    let files: BTreeSet<&str> = graph
        .modules
        .values()
        .map(|m| m.file.as_str())
        .filter(|file| !file.starts_with(GENERATED))
        .collect();
    let expected: BTreeSet<&str> = sources
        .iter()
        .map(|(file, _)| file.as_str())
        .filter(|file| module_of_file(file).is_some() && !graph.test_only.iter().any(|t| t == file))
        .collect();
    assert_eq!(files, expected);
    for module in [
        "crate",
        "session::handshake",
        "transport::grpc::wire",
        "proto",
    ] {
        assert!(graph.module(module).is_some(), "{module} is in the graph");
    }
    let client = graph
        .module("proto::arcp_client")
        .expect("the generated client");
    assert_eq!(client.file, format!("{GENERATED}arcp.v1.rs"));
    assert!(graph
        .edges_from("proto::arcp_client")
        .contains("transport::grpc::codec"));
}

/// Every `.rs` file under `src/`, as `(path from the package root, source)`, and every one
/// the build script generated, as `(OUT_DIR/name, source)`.
fn library_sources() -> Vec<(String, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        for entry in fs::read_dir(dir).expect("a readable directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path.strip_prefix(root).unwrap();
                let name = relative
                    .components()
                    .map(|c| c.as_os_str().to_str().expect("UTF-8 file names"))
                    .collect::<Vec<_>>()
                    .join("/");
                let source = fs::read_to_string(&path).expect("a readable source file");
                out.push((name, source));
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = Vec::new();
    walk(root, &root.join("src"), &mut sources);
    // What the build script generated, under the names `include_proto!` reads it by.
    let out_dir = Path::new(env!("OUT_DIR"));
    let mut generated = Vec::new();
    walk(out_dir, out_dir, &mut generated);
    sources.extend(
        generated
            .into_iter()
            .map(|(name, source)| (format!("{GENERATED}{name}"), source)),
    );
    sources.sort();
    sources
}

/// How a generated file is named among the sources: `OUT_DIR/arcp.v1.rs`.
const GENERATED: &str = "OUT_DIR/";

/// A module's path from the crate root: empty for the root, `["session", "handshake"]` for
/// `session::handshake`.
type ModPath = Vec<String>;

/// A module's name: `crate` for the root, `session::handshake`.
fn display(path: &[String]) -> String {
    if path.is_empty() {
        "crate".to_owned()
    } else {
        path.join("::")
    }
}

/// The path of the module named `name`, the inverse of [`display`].
fn parse_name(name: &str) -> ModPath {
    if name == "crate" {
        Vec::new()
    } else {
        name.split("::").map(str::to_owned).collect()
    }
}

/// The module a library file holds, or `None` for a file of another crate (`src/main.rs`,
/// `src/bin/**`) or one outside `src/`.
fn module_of_file(file: &str) -> Option<ModPath> {
    let path = file.strip_prefix("src/")?.strip_suffix(".rs")?;
    if path == "main" || path.starts_with("bin/") {
        return None;
    }
    let mut segments: ModPath = path.split('/').map(str::to_owned).collect();
    if segments == ["lib"] {
        return Some(Vec::new());
    }
    if segments.last().is_some_and(|s| s == "mod") {
        segments.pop();
    }
    Some(segments)
}

/// Whether `attrs` compile the item only for tests: `#[cfg(test)]`, or `#[cfg(all(.., test,
/// ..))]`. `cfg(not(test))` and `cfg(any(test, ..))` are not test-only.
fn is_test_only(attrs: &[Attribute]) -> bool {
    fn test_only(meta: &Meta) -> bool {
        match meta {
            Meta::Path(path) => path.is_ident("test"),
            Meta::List(list) if list.path.is_ident("all") => list
                .parse_args_with(
                    syn::punctuated::Punctuated::<Meta, syn::Token![,]>::parse_terminated,
                )
                .is_ok_and(|all| all.iter().any(test_only)),
            _ => false,
        }
    }
    attrs.iter().any(|attr| {
        attr.path().is_ident("cfg") && attr.parse_args::<Meta>().is_ok_and(|m| test_only(&m))
    })
}

fn item_attrs(item: &Item) -> &[Attribute] {
    match item {
        Item::Const(i) => &i.attrs,
        Item::Enum(i) => &i.attrs,
        Item::ExternCrate(i) => &i.attrs,
        Item::Fn(i) => &i.attrs,
        Item::ForeignMod(i) => &i.attrs,
        Item::Impl(i) => &i.attrs,
        Item::Macro(i) => &i.attrs,
        Item::Mod(i) => &i.attrs,
        Item::Static(i) => &i.attrs,
        Item::Struct(i) => &i.attrs,
        Item::Trait(i) => &i.attrs,
        Item::TraitAlias(i) => &i.attrs,
        Item::Type(i) => &i.attrs,
        Item::Union(i) => &i.attrs,
        Item::Use(i) => &i.attrs,
        _ => &[],
    }
}

/// One name a `use` tree brings in: `segments` as written, and what they import.
struct UseEntry {
    segments: Vec<String>,
    import: Import,
}

enum Import {
    /// The last segment under this name (`use a::b;`, `use a::b as c;`, `use a::{self}`).
    Name(String),
    /// Everything in it (`use a::*;`).
    Glob,
}

impl UseEntry {
    fn text(&self) -> String {
        let path = self.segments.join("::");
        match &self.import {
            Import::Glob => format!("use {path}::*"),
            Import::Name(name) if self.segments.last() == Some(name) => format!("use {path}"),
            Import::Name(name) => format!("use {path} as {name}"),
        }
    }
}

/// The entries of a `use` tree, `use a::{b, c::{self, *}}` being `a::b`, `a::c` and `a::c::*`.
fn flatten(tree: &UseTree) -> Vec<UseEntry> {
    fn walk(tree: &UseTree, prefix: &mut Vec<String>, out: &mut Vec<UseEntry>) {
        match tree {
            UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                walk(&p.tree, prefix, out);
                prefix.pop();
            }
            UseTree::Name(n) if n.ident == "self" => {
                if let Some(last) = prefix.last() {
                    out.push(UseEntry {
                        segments: prefix.clone(),
                        import: Import::Name(last.clone()),
                    });
                }
            }
            UseTree::Name(n) => {
                let mut segments = prefix.clone();
                segments.push(n.ident.to_string());
                out.push(UseEntry {
                    segments,
                    import: Import::Name(n.ident.to_string()),
                });
            }
            UseTree::Rename(r) => {
                let mut segments = prefix.clone();
                if r.ident != "self" {
                    segments.push(r.ident.to_string());
                }
                out.push(UseEntry {
                    segments,
                    import: Import::Name(r.rename.to_string()),
                });
            }
            UseTree::Glob(_) => out.push(UseEntry {
                segments: prefix.clone(),
                import: Import::Glob,
            }),
            UseTree::Group(g) => {
                for tree in &g.items {
                    walk(tree, prefix, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(tree, &mut Vec::new(), &mut out);
    out
}

/// Every path of two or more segments in a macro's tokens (`matches!(x, crate::a::B)`), read
/// as text since a macro's input is not Rust syntax until it is expanded.
fn macro_paths(mac: &syn::Macro) -> Vec<Vec<String>> {
    fn scan<'a>(mut cursor: Cursor<'a>, out: &mut Vec<Vec<String>>) -> Cursor<'a> {
        let mut path: Vec<String> = Vec::new();
        let mut after_colons = false;
        let flush = |path: &mut Vec<String>, out: &mut Vec<Vec<String>>| {
            if path.len() >= 2 {
                out.push(std::mem::take(path));
            } else {
                path.clear();
            }
        };
        while !cursor.eof() {
            if let Some((inside, _, _, next)) = cursor.any_group() {
                flush(&mut path, out);
                scan(inside, out);
                cursor = next;
            } else if let Some((ident, next)) = cursor.ident() {
                if !after_colons {
                    flush(&mut path, out);
                }
                path.push(ident.to_string());
                after_colons = false;
                cursor = next;
            } else if let Some((punct, next)) = cursor.punct() {
                let second_colon = next.punct().filter(|(p, _)| p.as_char() == ':');
                let dollar_crate = next.ident().filter(|(i, _)| i == "crate");
                match (punct.as_char(), second_colon, dollar_crate) {
                    (':', Some((_, after)), _) if !path.is_empty() && !after_colons => {
                        after_colons = true;
                        cursor = after;
                    }
                    ('$', _, Some((_, after))) => {
                        flush(&mut path, out);
                        path.push("crate".to_owned());
                        after_colons = false;
                        cursor = after;
                    }
                    _ => {
                        flush(&mut path, out);
                        after_colons = false;
                        cursor = next;
                    }
                }
            } else if let Some((_, next)) = cursor.token_tree() {
                flush(&mut path, out);
                after_colons = false;
                cursor = next;
            } else {
                break;
            }
        }
        flush(&mut path, out);
        cursor
    }
    let parser = |input: ParseStream| {
        input.step(|cursor| {
            let mut out = Vec::new();
            let end = scan(*cursor, &mut out);
            Ok((out, end))
        })
    };
    parser.parse2(mac.tokens.clone()).unwrap_or_default()
}

/// A module as the graph sees it.
struct Module {
    /// The file it is written in, from the package root.
    file: String,
    /// Its own items with the file each is written in (a generated one for what it includes),
    /// without test-only ones and without its inline modules (modules of their own).
    items: Vec<(String, Item)>,
    /// The modules it declares, `mod x;` or `mod x { .. }`, test-only ones left out.
    children: BTreeSet<String>,
    /// The test-only modules it declares in files of their own (`#[cfg(test)] mod x;`).
    test_children: BTreeSet<String>,
    /// Its module-level `use` entries.
    uses: Vec<UseEntry>,
    /// The names those bring in, each as the crate path it was written as.
    aliases: BTreeMap<String, ModPath>,
    /// The modules it glob-imports.
    globs: BTreeSet<ModPath>,
    /// For generated code and the module that includes it: that module.
    generated_root: Option<ModPath>,
}

/// Where an edge comes from: the file and the path as the code writes it.
type Evidence = BTreeSet<(String, String)>;

struct ModuleGraph {
    modules: BTreeMap<ModPath, Module>,
    /// `from -> to ->` the code behind the edge.
    edges: BTreeMap<ModPath, BTreeMap<ModPath, Evidence>>,
    /// Files under `src/` that map to a module no parent declares (so not compiled).
    undeclared: Vec<String>,
    /// Files of test-only modules, which are left out like test-only items.
    test_only: Vec<String>,
}

impl ModuleGraph {
    /// The graph of `sources`, `(path from the package root, source)` pairs.
    fn from_sources(sources: &[(String, String)]) -> ModuleGraph {
        let generated: BTreeMap<&str, &str> = sources
            .iter()
            .filter_map(|(file, source)| Some((file.strip_prefix(GENERATED)?, source.as_str())))
            .collect();
        let mut found = BTreeMap::new();
        for (file, source) in sources {
            let Some(path) = module_of_file(file) else {
                continue;
            };
            let parsed = syn::parse_file(source).unwrap_or_else(|e| panic!("{file}: {e}"));
            collect(&mut found, &generated, path, file, parsed.items);
        }
        // Keep the modules the crate compiles: the root, and each one its kept parent declares.
        let mut modules = BTreeMap::new();
        let mut undeclared = Vec::new();
        let mut test_only = Vec::new();
        // Modules compiled only for tests, whose own children are test-only too.
        let mut test_paths: BTreeSet<ModPath> = BTreeSet::new();
        let mut by_depth: Vec<(ModPath, Module)> = found.into_iter().collect();
        by_depth.sort_by_key(|(path, _)| path.len());
        for (path, module) in by_depth {
            let declared = match path.split_last() {
                None => true,
                Some((name, parent)) => modules
                    .get(parent)
                    .is_some_and(|p: &Module| p.children.contains(name)),
            };
            let test = path.split_last().is_some_and(|(name, parent)| {
                test_paths.contains(parent)
                    || modules
                        .get(parent)
                        .is_some_and(|p: &Module| p.test_children.contains(name))
            });
            if declared {
                modules.insert(path, module);
            } else if test {
                test_only.push(module.file);
                test_paths.insert(path);
            } else {
                undeclared.push(module.file);
            }
        }
        let mut graph = ModuleGraph {
            modules,
            edges: BTreeMap::new(),
            undeclared,
            test_only,
        };
        graph.resolve_aliases();
        graph.collect_edges();
        graph
    }

    /// Fills each module's `aliases` and `globs`. A `use` may start at a name another `use`
    /// brings in, so this repeats until nothing more resolves.
    fn resolve_aliases(&mut self) {
        loop {
            let mut found = Vec::new();
            for (path, module) in &self.modules {
                for entry in &module.uses {
                    let Some(target) = self.absolute(path, &entry.segments) else {
                        continue;
                    };
                    match &entry.import {
                        Import::Name(name) if !module.aliases.contains_key(name) => {
                            found.push((path.clone(), Some(name.clone()), target));
                        }
                        Import::Glob
                            if self.modules.contains_key(&target)
                                && !module.globs.contains(&target) =>
                        {
                            found.push((path.clone(), None, target));
                        }
                        _ => {}
                    }
                }
            }
            if found.is_empty() {
                return;
            }
            for (path, name, target) in found {
                let module = self.modules.get_mut(&path).unwrap();
                match name {
                    Some(name) => {
                        module.aliases.insert(name, target);
                    }
                    None => {
                        module.globs.insert(target);
                    }
                }
            }
        }
    }

    fn collect_edges(&mut self) {
        let mut edges: BTreeMap<ModPath, BTreeMap<ModPath, Evidence>> = BTreeMap::new();
        for (path, module) in &self.modules {
            let mut collector = PathCollector {
                graph: self,
                module: path,
                found: Vec::new(),
            };
            for (file, item) in &module.items {
                collector.visit_item(item);
                let generated_root = module.generated_root.as_ref();
                for (target, text) in collector.found.drain(..) {
                    let within_generated = file.starts_with(GENERATED)
                        && generated_root.is_some_and(|root| target.starts_with(root));
                    if &target != path && !within_generated {
                        edges
                            .entry(path.clone())
                            .or_default()
                            .entry(target)
                            .or_default()
                            .insert((file.clone(), text));
                    }
                }
            }
        }
        self.edges = edges;
    }

    /// The crate path `segments` names when written in module `at`, aliases expanded; `None`
    /// when it does not start in this crate (a dependency, `std`, a local name or variable).
    fn absolute(&self, at: &ModPath, segments: &[String]) -> Option<ModPath> {
        let (first, rest) = segments.split_first()?;
        let module = self.modules.get(at)?;
        let mut base: ModPath = match first.as_str() {
            "crate" => Vec::new(),
            "self" => at.clone(),
            "super" => {
                let mut base = at.clone();
                base.pop()?;
                let mut rest = rest;
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop()?;
                    rest = &rest[1..];
                }
                base.extend(rest.iter().cloned());
                return Some(base);
            }
            name if module.children.contains(name) => {
                let mut base = at.clone();
                base.push(name.to_owned());
                base
            }
            name => {
                if let Some(target) = module.aliases.get(name) {
                    target.clone()
                } else {
                    // A name a glob import brings in, written through the module it comes from.
                    let glob = module.globs.iter().find(|g| {
                        self.modules.get(*g).is_some_and(|m| {
                            m.children.contains(name) || m.aliases.contains_key(name)
                        })
                    })?;
                    let mut base = glob.clone();
                    base.push(name.to_owned());
                    base
                }
            }
        };
        base.extend(rest.iter().cloned());
        Some(base)
    }

    /// The deepest module `path` names: the module itself, or the one holding the item.
    fn owner(&self, path: &[String]) -> ModPath {
        (0..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|prefix| self.modules.contains_key(prefix))
            .unwrap_or_default()
    }

    /// The module named `name` (`crate`, `session::handshake`).
    fn module(&self, name: &str) -> Option<&Module> {
        self.modules.get(&parse_name(name))
    }

    /// The modules the module named `from` depends on, by name.
    fn edges_from(&self, from: &str) -> BTreeSet<String> {
        self.edges
            .get(&parse_name(from))
            .map(|to| to.keys().map(|m| display(m)).collect())
            .unwrap_or_default()
    }

    /// The strongly connected components of more than one module (Tarjan), each sorted, in
    /// order of their first module.
    fn components(&self) -> Vec<Vec<ModPath>> {
        struct Tarjan<'g> {
            graph: &'g ModuleGraph,
            index: BTreeMap<&'g ModPath, usize>,
            low: BTreeMap<&'g ModPath, usize>,
            stack: Vec<&'g ModPath>,
            on_stack: BTreeSet<&'g ModPath>,
            components: Vec<Vec<ModPath>>,
        }
        impl<'g> Tarjan<'g> {
            fn connect(&mut self, v: &'g ModPath) {
                let i = self.index.len();
                self.index.insert(v, i);
                self.low.insert(v, i);
                self.stack.push(v);
                self.on_stack.insert(v);
                for w in self.graph.edges.get(v).into_iter().flat_map(|e| e.keys()) {
                    if !self.index.contains_key(w) {
                        self.connect(w);
                        let low = self.low[v].min(self.low[w]);
                        self.low.insert(v, low);
                    } else if self.on_stack.contains(w) {
                        let low = self.low[v].min(self.index[w]);
                        self.low.insert(v, low);
                    }
                }
                if self.low[v] == self.index[v] {
                    let mut component = Vec::new();
                    loop {
                        let w = self.stack.pop().unwrap();
                        self.on_stack.remove(w);
                        component.push(w.clone());
                        if w == v {
                            break;
                        }
                    }
                    if component.len() > 1 {
                        component.sort();
                        self.components.push(component);
                    }
                }
            }
        }
        let mut tarjan = Tarjan {
            graph: self,
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            stack: Vec::new(),
            on_stack: BTreeSet::new(),
            components: Vec::new(),
        };
        for v in self.modules.keys() {
            if !tarjan.index.contains_key(v) {
                tarjan.connect(v);
            }
        }
        let mut components = tarjan.components;
        components.sort();
        components
    }

    /// The elementary cycles inside `component`, each starting at its smallest module; at
    /// most `limit` of them.
    fn cycles_in(&self, component: &[ModPath], limit: usize) -> Vec<Vec<ModPath>> {
        fn extend(
            graph: &ModuleGraph,
            allowed: &BTreeSet<&ModPath>,
            path: &mut Vec<ModPath>,
            out: &mut Vec<Vec<ModPath>>,
            limit: usize,
        ) {
            let start = path[0].clone();
            let last = path.last().unwrap().clone();
            for next in graph.edges.get(&last).into_iter().flat_map(|e| e.keys()) {
                if out.len() >= limit {
                    return;
                }
                if *next == start {
                    out.push(path.clone());
                } else if allowed.contains(next) && *next > start && !path.contains(next) {
                    path.push(next.clone());
                    extend(graph, allowed, path, out, limit);
                    path.pop();
                }
            }
        }
        let allowed: BTreeSet<&ModPath> = component.iter().collect();
        let mut out = Vec::new();
        for start in component {
            extend(self, &allowed, &mut vec![start.clone()], &mut out, limit);
        }
        out
    }

    /// Every cycle, as `a -> b -> a`, grouped by component.
    fn cycles(&self) -> Vec<String> {
        self.components()
            .iter()
            .flat_map(|c| self.cycles_in(c, usize::MAX))
            .map(|cycle| cycle_text(&cycle))
            .collect()
    }

    /// `None` without cycles; otherwise each component, its cycles, and the code behind every
    /// edge between its modules.
    fn cycle_report(&self) -> Option<String> {
        const LIMIT: usize = 50;
        let components = self.components();
        if components.is_empty() {
            return None;
        }
        let mut report = format!(
            "import cycles between modules: {} strongly connected component(s)\n",
            components.len()
        );
        for component in &components {
            let names: Vec<String> = component.iter().map(|m| display(m)).collect();
            let _ = writeln!(report, "\n{}:", names.join(", "));
            let cycles = self.cycles_in(component, LIMIT + 1);
            for cycle in cycles.iter().take(LIMIT) {
                let _ = writeln!(report, "  {}", cycle_text(cycle));
            }
            if cycles.len() > LIMIT {
                let _ = writeln!(report, "  ... and more (only the first {LIMIT} are listed)");
            }
            let _ = writeln!(report, "  because:");
            for from in component {
                for (to, evidence) in &self.edges[from] {
                    if component.contains(to) {
                        for (file, text) in evidence {
                            let _ = writeln!(
                                report,
                                "    {} -> {}: {file}: {text}",
                                display(from),
                                display(to)
                            );
                        }
                    }
                }
            }
        }
        Some(report)
    }
}

/// `a -> b -> a` for the cycle `[a, b]`.
fn cycle_text(cycle: &[ModPath]) -> String {
    let mut names: Vec<String> = cycle.iter().map(|m| display(m)).collect();
    names.push(display(&cycle[0]));
    names.join(" -> ")
}

/// Records `path` as a module of `found`, with `items` written in `file`; its inline modules
/// become modules of their own.
fn collect(
    found: &mut BTreeMap<ModPath, Module>,
    generated: &BTreeMap<&str, &str>,
    path: ModPath,
    file: &str,
    items: Vec<Item>,
) {
    collect_module(found, generated, path, file, items, None);
}

/// [`collect`], for a module written in generated code when `generated_root` is set.
fn collect_module(
    found: &mut BTreeMap<ModPath, Module>,
    generated: &BTreeMap<&str, &str>,
    path: ModPath,
    file: &str,
    items: Vec<Item>,
    generated_root: Option<ModPath>,
) {
    let mut module = Module {
        file: file.to_owned(),
        items: Vec::new(),
        children: BTreeSet::new(),
        test_children: BTreeSet::new(),
        uses: Vec::new(),
        aliases: BTreeMap::new(),
        globs: BTreeSet::new(),
        generated_root,
    };
    let mut inline = Vec::new();
    add_items(&mut module, &path, &mut inline, generated, file, items);
    let generated_root = module.generated_root.clone();
    found.insert(path.clone(), module);
    for (name, file, content) in inline {
        let mut child = path.clone();
        child.push(name);
        let root = generated_root
            .clone()
            .filter(|_| file.starts_with(GENERATED));
        collect_module(found, generated, child, &file, content, root);
    }
}

/// Adds `items`, written in `file`, to `module` (at `path`); inline modules go to `inline`,
/// and the items of a generated file that `include_proto!` includes are added in its place.
fn add_items(
    module: &mut Module,
    path: &ModPath,
    inline: &mut Vec<(String, String, Vec<Item>)>,
    generated: &BTreeMap<&str, &str>,
    file: &str,
    items: Vec<Item>,
) {
    for item in items {
        if is_test_only(item_attrs(&item)) {
            if let Item::Mod(m) = &item {
                if m.content.is_none() {
                    module.test_children.insert(m.ident.to_string());
                }
            }
            continue;
        }
        if let Some(name) = included_proto(&item) {
            let source = generated
                .get(name.as_str())
                .unwrap_or_else(|| panic!("{file} includes {name}, which was not generated"));
            let parsed = syn::parse_file(source).unwrap_or_else(|e| panic!("{name}: {e}"));
            let included = format!("{GENERATED}{name}");
            module.generated_root.get_or_insert_with(|| path.clone());
            add_items(module, path, inline, generated, &included, parsed.items);
            continue;
        }
        match item {
            Item::Mod(m) => {
                let name = m.ident.to_string();
                module.children.insert(name.clone());
                if let Some((_, content)) = m.content {
                    inline.push((name, file.to_owned(), content));
                }
            }
            Item::Use(u) => {
                if u.leading_colon.is_none() {
                    module.uses.extend(flatten(&u.tree));
                }
                module.items.push((file.to_owned(), Item::Use(u)));
            }
            other => module.items.push((file.to_owned(), other)),
        }
    }
}

/// The file `include_proto!("package")` includes (`package.rs`), when `item` is that macro.
fn included_proto(item: &Item) -> Option<String> {
    let Item::Macro(m) = item else {
        return None;
    };
    m.mac
        .path
        .segments
        .last()
        .filter(|s| s.ident == "include_proto")?;
    let package: syn::LitStr = m.mac.parse_body().ok()?;
    Some(format!("{}.rs", package.value()))
}

/// Collects the crate paths one module's items write, each with the module it names.
struct PathCollector<'g> {
    graph: &'g ModuleGraph,
    module: &'g ModPath,
    found: Vec<(ModPath, String)>,
}

impl PathCollector<'_> {
    fn record(&mut self, segments: &[String], from_use: bool) {
        let Some(target) = self.graph.absolute(self.module, segments) else {
            return;
        };
        // A lone name that is a module is a variable in code (`let outbox = ..; outbox.push()`),
        // never a use of the module.
        if !from_use && segments.len() == 1 && self.graph.modules.contains_key(&target) {
            return;
        }
        let owner = self.graph.owner(&target);
        // A name a `use` brought in, naming no deeper module than that `use` did: the `use`
        // already stands for the edge.
        if !from_use && !["crate", "self", "super"].contains(&segments[0].as_str()) {
            let first = self.graph.absolute(self.module, &segments[..1]);
            let via_use = first.filter(|f| {
                self.graph
                    .modules
                    .get(self.module)
                    .is_some_and(|m| !m.children.contains(&segments[0]))
                    && self.graph.owner(f) == owner
            });
            if via_use.is_some() {
                return;
            }
        }
        self.found.push((owner, segments.join("::")));
    }
}

impl<'ast> Visit<'ast> for PathCollector<'_> {
    fn visit_item(&mut self, item: &'ast Item) {
        if !is_test_only(item_attrs(item)) {
            visit::visit_item(self, item);
        }
    }

    /// A `mod` inside a function; a module-level one is a module of its own.
    fn visit_item_mod(&mut self, _: &'ast syn::ItemMod) {}

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        if item.leading_colon.is_some() {
            return;
        }
        for entry in flatten(&item.tree) {
            let before = self.found.len();
            self.record(&entry.segments, true);
            if let Some(found) = self.found.get_mut(before) {
                found.1 = entry.text();
            }
        }
    }

    fn visit_impl_item(&mut self, item: &'ast syn::ImplItem) {
        let attrs = match item {
            syn::ImplItem::Const(i) => &i.attrs,
            syn::ImplItem::Fn(i) => &i.attrs,
            syn::ImplItem::Type(i) => &i.attrs,
            syn::ImplItem::Macro(i) => &i.attrs,
            _ => return visit::visit_impl_item(self, item),
        };
        if !is_test_only(attrs) {
            visit::visit_impl_item(self, item);
        }
    }

    fn visit_trait_item(&mut self, item: &'ast syn::TraitItem) {
        let attrs = match item {
            syn::TraitItem::Const(i) => &i.attrs,
            syn::TraitItem::Fn(i) => &i.attrs,
            syn::TraitItem::Type(i) => &i.attrs,
            syn::TraitItem::Macro(i) => &i.attrs,
            _ => return visit::visit_trait_item(self, item),
        };
        if !is_test_only(attrs) {
            visit::visit_trait_item(self, item);
        }
    }

    fn visit_field(&mut self, field: &'ast syn::Field) {
        if !is_test_only(&field.attrs) {
            visit::visit_field(self, field);
        }
    }

    fn visit_variant(&mut self, variant: &'ast syn::Variant) {
        if !is_test_only(&variant.attrs) {
            visit::visit_variant(self, variant);
        }
    }

    fn visit_local(&mut self, local: &'ast syn::Local) {
        if !is_test_only(&local.attrs) {
            visit::visit_local(self, local);
        }
    }

    fn visit_arm(&mut self, arm: &'ast syn::Arm) {
        if !is_test_only(&arm.attrs) {
            visit::visit_arm(self, arm);
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        if path.leading_colon.is_none() {
            let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
            self.record(&segments, false);
        }
        visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        visit::visit_macro(self, mac);
        for segments in macro_paths(mac) {
            self.record(&segments, false);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The checker itself, on small made-up crates
// ---------------------------------------------------------------------------------------------

fn graph_of(files: &[(&str, &str)]) -> ModuleGraph {
    let sources: Vec<(String, String)> = files
        .iter()
        .map(|(f, s)| ((*f).to_owned(), (*s).to_owned()))
        .collect();
    ModuleGraph::from_sources(&sources)
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn crate_super_and_self_paths_are_edges_and_a_cycle_is_reported() {
    let graph = graph_of(&[
        ("src/lib.rs", "pub mod a; pub mod b;"),
        ("src/a.rs", "pub fn f() { crate::b::g() }"),
        (
            "src/b.rs",
            "pub fn g() {} pub fn h() { super::a::f(); self::g() }",
        ),
    ]);
    assert_eq!(graph.edges_from("a"), names(&["b"]));
    assert_eq!(graph.edges_from("b"), names(&["a"]));
    assert_eq!(graph.cycles(), vec!["a -> b -> a"]);
    let report = graph.cycle_report().unwrap();
    assert!(report.contains("a -> b: src/a.rs: crate::b::g"), "{report}");
    assert!(report.contains("b -> a: src/b.rs: super::a::f"), "{report}");
}

#[test]
fn paths_name_the_deepest_module_that_exists() {
    let graph = graph_of(&[
        ("src/lib.rs", "pub mod session; pub mod gateway;"),
        (
            "src/session/mod.rs",
            "pub mod connection; pub mod handshake; pub struct Session;",
        ),
        ("src/session/handshake.rs", "pub fn open() {}"),
        (
            "src/session/connection.rs",
            "fn f(_: super::Session) { crate::session::handshake::open() }",
        ),
        ("src/gateway.rs", "use crate::session::Session;"),
    ]);
    assert_eq!(
        graph.edges_from("session::connection"),
        names(&["session", "session::handshake"])
    );
    assert_eq!(graph.edges_from("gateway"), names(&["session"]));
    assert!(
        graph.edges_from("session").is_empty(),
        "declaring is no edge"
    );
    assert!(graph.cycles().is_empty());
}

#[test]
fn a_parent_using_its_child_depends_on_it() {
    let graph = graph_of(&[
        ("src/lib.rs", "pub mod job;"),
        (
            "src/job/mod.rs",
            "pub mod record; pub mod context; pub use record::Status; use self::context::Ctx; \
             pub struct Job;",
        ),
        ("src/job/record.rs", "pub enum Status {}"),
        ("src/job/context.rs", "pub struct Ctx(super::Job);"),
    ]);
    assert_eq!(
        graph.edges_from("job"),
        names(&["job::context", "job::record"])
    );
    assert_eq!(graph.cycles(), vec!["job -> job::context -> job"]);
}

#[test]
fn names_brought_in_by_use_are_expanded_as_written() {
    let graph = graph_of(&[
        (
            "src/lib.rs",
            "pub mod protocol; pub mod user; pub mod other;",
        ),
        ("src/protocol/mod.rs", "pub mod server;"),
        ("src/protocol/server.rs", "pub struct Frame;"),
        (
            "src/user.rs",
            "use crate::protocol as p; use p::server; fn f() -> server::Frame { todo!() }",
        ),
        (
            "src/other.rs",
            "use super::*; fn f() { let protocol = 1; let _ = protocol; protocol::server::Frame; }",
        ),
    ]);
    assert_eq!(
        graph.edges_from("user"),
        names(&["protocol", "protocol::server"])
    );
    // The glob brings in the root's child `protocol`; the variable of that name is no edge.
    assert_eq!(
        graph.edges_from("other"),
        names(&["crate", "protocol::server"])
    );
}

#[test]
fn paths_in_macro_invocations_count() {
    let graph = graph_of(&[
        ("src/lib.rs", "pub mod a; pub mod b; pub mod c;"),
        (
            "src/a.rs",
            "fn f(x: u8) -> bool { matches!(x, crate::b::ONE) && vec![$crate::c::two()].is_empty() }",
        ),
        ("src/b.rs", "pub const ONE: u8 = 1;"),
        ("src/c.rs", "pub fn two() -> u8 { 2 }"),
    ]);
    assert_eq!(graph.edges_from("a"), names(&["b", "c"]));
}

#[test]
fn test_code_is_no_edge() {
    let graph = graph_of(&[
        (
            "src/lib.rs",
            "pub mod a; pub mod b; #[cfg(test)] mod testing;",
        ),
        (
            "src/a.rs",
            "pub fn f() {}
             #[cfg(test)] fn helper() { crate::b::g() }
             #[cfg(all(test, unix))] use crate::b::g;
             pub struct S { #[cfg(test)] pub probe: crate::b::T }
             impl S { #[cfg(test)] fn probe() { crate::b::g() } }
             #[cfg(test)] mod tests { use crate::b::g; }",
        ),
        (
            "src/b.rs",
            "pub struct T; pub fn g() { crate::a::f() } #[cfg(not(test))] fn live() { crate::c() }",
        ),
        ("src/testing.rs", "use crate::a::f;"),
    ]);
    assert!(
        graph.edges_from("a").is_empty(),
        "{:?}",
        graph.edges_from("a")
    );
    assert_eq!(graph.edges_from("b"), names(&["a", "crate"]));
    assert!(
        graph.module("testing").is_none(),
        "a test-only file is no module"
    );
    assert!(graph.module("a::tests").is_none());
    assert!(graph.cycles().is_empty());
}

#[test]
fn an_inline_module_is_a_module_and_main_and_bin_are_other_crates() {
    let graph = graph_of(&[
        (
            "src/lib.rs",
            "pub mod a; pub mod proto { pub struct Frame; } pub use a::A;",
        ),
        ("src/a.rs", "use crate::proto::Frame; pub struct A(Frame);"),
        ("src/main.rs", "use arcp::a::A; fn main() {}"),
        ("src/bin/tool.rs", "fn main() {}"),
    ]);
    assert_eq!(graph.edges_from("a"), names(&["proto"]));
    assert_eq!(graph.edges_from("crate"), names(&["a"]));
    assert!(graph.cycles().is_empty());
    assert!(graph.undeclared.is_empty());
}

#[test]
fn generated_code_belongs_to_the_module_that_includes_it() {
    let graph = graph_of(&[
        (
            "src/lib.rs",
            "pub mod codec; pub mod proto { tonic::include_proto!(\"pkg.v1\"); }",
        ),
        ("src/codec.rs", "pub struct Codec(crate::proto::Frame);"),
        (
            "OUT_DIR/pkg.v1.rs",
            "pub struct Frame { pub payload: frame::Payload } \
             pub mod frame { pub enum Payload { Hello(super::Hello) } } pub struct Hello; \
             pub mod pkg_client { pub fn c() -> crate::codec::Codec { todo!() } }",
        ),
    ]);
    assert_eq!(graph.edges_from("proto::pkg_client"), names(&["codec"]));
    assert_eq!(graph.edges_from("codec"), names(&["proto"]));
    // `proto` and `proto::frame` use each other only as their generator lays them out.
    assert!(graph.edges_from("proto").is_empty());
    assert!(graph.edges_from("proto::frame").is_empty());
    assert!(
        graph.cycles().is_empty(),
        "the client is a module of its own"
    );
    let report = graph_of(&[
        (
            "src/lib.rs",
            "pub mod codec; pub mod proto { include_proto!(\"pkg.v1\"); }",
        ),
        ("src/codec.rs", "pub struct Codec(crate::proto::Frame);"),
        (
            "OUT_DIR/pkg.v1.rs",
            "pub struct Frame(crate::codec::Codec);",
        ),
    ])
    .cycle_report()
    .unwrap();
    assert!(
        report.contains("proto -> codec: OUT_DIR/pkg.v1.rs: crate::codec::Codec"),
        "{report}"
    );
}

#[test]
fn every_cycle_of_a_component_is_listed() {
    let graph = graph_of(&[
        ("src/lib.rs", "pub mod a; pub mod b; pub mod c;"),
        ("src/a.rs", "use crate::{b::B, c::C};"),
        (
            "src/b.rs",
            "pub struct B; use crate::a as _a; use super::c::C;",
        ),
        ("src/c.rs", "pub struct C; use crate::a::*;"),
    ]);
    assert_eq!(
        graph.cycles(),
        vec!["a -> b -> a", "a -> b -> c -> a", "a -> c -> a"]
    );
    assert_eq!(graph.components().len(), 1);
}
