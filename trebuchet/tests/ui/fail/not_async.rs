use trebuchet::{RemoteError, distributed_actor};

#[distributed_actor]
trait Counter {
    fn get(&self) -> Result<u64, RemoteError>;
}

fn main() {}
