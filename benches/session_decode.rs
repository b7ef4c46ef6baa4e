//! How PHP session decoding grows with the session: a session holding `range(1, N)` (what PHP's
//! `serialize` writes for it) decoded and turned into its JSON form, as every lookup does, for N
//! from 20,000 to 200,000 elements. Linear decoding keeps the time per element flat. Run:
//! `cargo bench --bench session_decode`.

use cutover_session::php::{self, Serializer};
use std::time::{Duration, Instant};

/// `big|a:N:{i:0;i:1;i:1;i:2;…}`: PHP's session encoding of `$_SESSION['big'] = range(1, N)`.
fn blob(n: usize) -> Vec<u8> {
    let mut s = format!("big|a:{n}:{{");
    for i in 0..n {
        s.push_str(&format!("i:{i};i:{};", i + 1));
    }
    s.push('}');
    s.into_bytes()
}

fn main() {
    println!("| elements | session bytes | decode (best of 5) | + JSON form | per element, both |");
    println!("|---|---|---|---|---|");
    for n in [20_000, 50_000, 100_000, 200_000] {
        let b = blob(n);
        let (mut decode, mut both) = (Duration::MAX, Duration::MAX);
        for _ in 0..5 {
            let t = Instant::now();
            let session = php::decode_session(&b, Serializer::Php, usize::MAX)
                .unwrap_or_else(|e| panic!("decode: {e}"));
            let decoded = t.elapsed();
            let json = session.to_json().unwrap_or_else(|e| panic!("json: {e}"));
            std::hint::black_box(json);
            decode = decode.min(decoded);
            both = both.min(t.elapsed());
        }
        println!(
            "| {n} | {} | {:.1} ms | {:.1} ms | {:.0} ns |",
            b.len(),
            decode.as_secs_f64() * 1e3,
            both.as_secs_f64() * 1e3,
            both.as_secs_f64() * 1e9 / n as f64
        );
    }
}
