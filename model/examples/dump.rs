//! Prints a generated sequence with the model's expectations: `cargo run -p gateway-testkit
//! --example dump -- SEED`.

use gateway_model::scenario::{Step, generate, replay};

fn main() {
    let seed = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let s = generate(seed);
    println!(
        "# seed {seed}, host {:?}, start {}\n{}",
        s.role, s.start, s.policy_text
    );
    for (i, (step, e)) in s.steps.iter().zip(replay(&s)).enumerate() {
        match (step, e) {
            (Step::Packet { dir, label, frame }, Some(e)) => println!(
                "{i:>4} {:<8} {:<22} {}{} [{} bytes] {label}",
                format!("{dir:?}"),
                e.reason,
                if e.passes { "pass" } else { "DROP" },
                if e.opened_flow { " +flow" } else { "" },
                frame.len()
            ),
            (Step::Swap { .. }, _) => println!("{i:>4} -- policy swap"),
            (Step::Advance { seconds }, _) => println!("{i:>4} -- {seconds} s pass"),
            _ => {}
        }
    }
}
