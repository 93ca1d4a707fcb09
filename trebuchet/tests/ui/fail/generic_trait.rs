use trebuchet::{RemoteError, distributed_actor};

#[distributed_actor]
trait Store<T> {
    type Key;
    const LIMIT: usize;
    async fn get(&self) -> Result<u64, RemoteError>;
}

fn main() {}
