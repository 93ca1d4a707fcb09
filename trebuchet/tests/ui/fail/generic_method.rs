use trebuchet::{RemoteError, distributed_actor};

#[distributed_actor]
trait Store {
    async fn put<T: serde::Serialize>(&self, value: T) -> Result<(), RemoteError>;
    async fn each(&self, f: impl Fn(u64)) -> Result<(), RemoteError>;
}

fn main() {}
