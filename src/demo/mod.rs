//! `klantbeeld demo generate`: a made-up retailer's six source systems, written in the
//! layout of SOURCES.md, with ground truth for scoring the matching. Deterministic per
//! seed.
//!
//! Layout: `OUT/dumps/<system>/...` and `OUT/truth/truth.parquet`; with `--day2` also
//! `OUT/day2/dumps/...` and `OUT/day2/truth/truth.parquet`.

mod names;
mod noise;
mod world;
mod write;

use std::path::PathBuf;

use chrono::NaiveDate;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub use noise::Profile;
pub use world::World;

/// Arguments of `demo generate`.
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    /// Number of people.
    #[arg(long, default_value_t = 2000)]
    pub persons: usize,
    /// Seed: the same seed gives the same files.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the next day's full dumps (new, changed and deleted records).
    #[arg(long)]
    pub day2: bool,
    /// The dumps' date (facts happen before it).
    #[arg(long, default_value = "2026-11-22")]
    pub as_of: NaiveDate,
    /// How dirty the records are: the base rates, or one kind of dirt turned up.
    #[arg(long, value_enum, default_value_t = Profile::Base)]
    pub noise: Profile,
}

/// Builds the world of day one (and, when `day2`, of day two).
pub fn build(args: &GenerateArgs) -> (World, Option<World>) {
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let mut world = World::new(args.as_of, args.noise);
    world.add_people(&mut rng, args.persons, 1);
    let mut keys = world::Keys::default();
    let persons = world.persons.clone();
    for p in &persons {
        world.add_records(&mut rng, p, &mut keys);
    }
    let day2 = args.day2.then(|| {
        let mut rng2 = ChaCha8Rng::seed_from_u64(args.seed ^ 0x0d2);
        world.next_day(&mut rng2, &mut keys)
    });
    (world, day2)
}

/// Generates and writes the dumps; returns a one-line summary.
pub fn generate(args: &GenerateArgs) -> write::IoResult<String> {
    let (day1, day2) = build(args);
    write::write_world(&day1, args.seed, &args.out.join("dumps"), &args.out.join("truth"))?;
    if let Some(d2) = &day2 {
        let dir = args.out.join("day2");
        write::write_world(d2, args.seed, &dir.join("dumps"), &dir.join("truth"))?;
    }
    let records = day1.crm.len() + day1.accounts.len() + day1.cards.len() + day1.tickets.len() + day1.subscribers.len();
    Ok(format!(
        "wrote {} people, {} identity records (crm {}, webshop {}, pos {}, service {}, email {}) to {}{}",
        day1.persons.len(),
        records,
        day1.crm.len(),
        day1.accounts.len(),
        day1.cards.len(),
        day1.tickets.len(),
        day1.subscribers.len(),
        args.out.join("dumps").display(),
        if day2.is_some() { " (and day2/)" } else { "" }
    ))
}
