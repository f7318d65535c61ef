//! The smallest Manta job: start (under `srun`/`mpirun`, the whole cluster), run one task, print
//! its result, stop. `scripts/bench-launch` times it from the launcher's start to that line.

#[manta::remote]
fn answer() -> u32 {
    42
}

fn main() -> Result<(), manta::Error> {
    manta::init()?;
    let v = answer::remote().get()?;
    println!("first result: {v}");
    manta::shutdown();
    Ok(())
}
