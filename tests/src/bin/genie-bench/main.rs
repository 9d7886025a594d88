//! The benchmarks behind `cargo xtask bench`. Each compares genie with a baseline measured in
//! the same run and reports ratios; nothing here asserts a timing.

mod cni;
mod datapath;
mod limits;

use anyhow::{Result, bail};

fn main() -> Result<()> {
    let which = std::env::args().nth(1).unwrap_or_default();
    match which.as_str() {
        "datapath" => datapath::run(),
        "cni" => cni::run(),
        "limits" => limits::run(),
        other => bail!("unknown benchmark {other:?} (available: datapath, cni, limits)"),
    }
}
