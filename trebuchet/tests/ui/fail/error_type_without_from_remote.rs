use trebuchet::distributed_actor;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum CounterError {
    Overflow,
}

impl std::fmt::Display for CounterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("overflow")
    }
}

#[distributed_actor]
trait Counter {
    async fn increment(&self, by: u64) -> Result<u64, CounterError>;
}

fn main() {}
