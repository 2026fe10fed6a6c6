//! `netlet-wasm-build`: builds the policy modules of `wasm-policies/` into components.
//!
//! - C guests (`modules/*.c`): wit-bindgen's C generator writes the bindings of the module's world,
//!   clang compiles them with the module for wasm32 (wasi-libc for `malloc` and string functions,
//!   reactor model, no WASI imports may remain), and wit-component turns the core module into a
//!   component.
//! - Hostile test modules (`hostile/*.wat`): core modules written by hand against the canonical ABI,
//!   given the world's metadata and made components the same way.
//!
//! Each source names its world on its first line (`// world: dns-policy` or `;; world: ...`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Parser;
use wit_bindgen_core::wit_parser::{Resolve, WorldId};
use wit_component::{ComponentEncoder, StringEncoding};

#[derive(Parser)]
#[command(about = "Build netlet's WebAssembly policy modules from source")]
struct Args {
    /// Where the components go (one `<name>.wasm` per source).
    #[arg(long)]
    out: PathBuf,
    /// The C compiler with the wasm32 target (Debian: clang-14 with lld-14 and wasi-libc).
    #[arg(long, env = "NETLET_WASM_CC", default_value = "clang-14")]
    cc: String,
    /// The wasi-libc sysroot.
    #[arg(long, env = "NETLET_WASI_SYSROOT", default_value = "/usr")]
    sysroot: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(&args.out)?;
    let mut resolve = Resolve::default();
    let (pkg, _) = resolve
        .push_dir(root.join("wit"))
        .context("reading wasm-policies/wit")?;

    let mut built = Vec::new();
    for (dir, ext) in [("modules", "c"), ("hostile", "wat")] {
        let mut sources: Vec<PathBuf> = std::fs::read_dir(root.join(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .collect();
        sources.sort();
        for src in sources {
            let name = src.file_stem().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&src)?;
            let world_name =
                world_of(&text).with_context(|| format!("{}: no world line", src.display()))?;
            let world = resolve.select_world(&[pkg], Some(world_name))?;
            let core = if ext == "c" {
                compile_c(&args, root, &mut resolve, world, world_name, &src, &name)?
            } else {
                let mut core = wat::parse_file(&src)?;
                wit_component::embed_component_metadata(
                    &mut core,
                    &resolve,
                    world,
                    StringEncoding::UTF8,
                    false,
                )?;
                core
            };
            let component = ComponentEncoder::default()
                .module(&core)
                .and_then(|e| e.validate(true).encode())
                .with_context(|| format!("{}: making a component", src.display()))?;
            let path = args.out.join(format!("{name}.wasm"));
            std::fs::write(&path, &component)?;
            built.push((name, world_name.to_string(), component.len()));
        }
    }
    for (name, world, len) in built {
        println!("{name:<28} {world:<16} {len:>8} bytes");
    }
    Ok(())
}

/// The world a source names on its first line.
fn world_of(text: &str) -> Option<&str> {
    let first = text.lines().next()?;
    let rest = first.trim_start_matches(['/', ';', ' ']);
    rest.strip_prefix("world:").map(str::trim)
}

fn compile_c(
    args: &Args,
    root: &Path,
    resolve: &mut Resolve,
    world: WorldId,
    world_name: &str,
    src: &Path,
    name: &str,
) -> Result<Vec<u8>> {
    let gen_dir = args.out.join("gen").join(world_name);
    std::fs::create_dir_all(&gen_dir)?;
    let mut files = wit_bindgen_core::Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(resolve, world, &mut files)?;
    let mut inputs = vec![src.to_path_buf()];
    for (file, bytes) in files.iter() {
        let path = gen_dir.join(file);
        std::fs::write(&path, bytes)?;
        if file.ends_with(".c") || file.ends_with(".o") {
            inputs.push(path);
        }
    }
    let core = args.out.join(format!("{name}.core.wasm"));
    let sysroot = &args.sysroot;
    let status = Command::new(&args.cc)
        .arg("--target=wasm32-wasi")
        .arg(format!(
            "-isystem{}",
            sysroot.join("include/wasm32-wasi").display()
        ))
        .arg(format!("-L{}", sysroot.join("lib/wasm32-wasi").display()))
        .args([
            "-nostdlibinc",
            "-mexec-model=reactor",
            "-O2",
            "-Wall",
            "-Werror",
        ])
        .args(["-Wno-unused-function", "-fuse-ld=lld"])
        // A 16 KiB stack (wasm-ld's default is 64 KiB): less memory per instance to set up
        // and to reset after each call.
        .arg("-Wl,-z,stack-size=16384")
        .arg(format!("-I{}", gen_dir.display()))
        .arg(format!("-I{}", root.join("modules").display()))
        .args(&inputs)
        .arg("-o")
        .arg(&core)
        .status()
        .with_context(|| format!("running {}", args.cc))?;
    if !status.success() {
        bail!("{}: {} failed", src.display(), args.cc);
    }
    Ok(std::fs::read(&core)?)
}
