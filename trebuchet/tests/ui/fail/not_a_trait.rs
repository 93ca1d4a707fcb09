use trebuchet::distributed_actor;

#[distributed_actor]
struct Counter {
    value: u64,
}

fn main() {}
