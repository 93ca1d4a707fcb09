use trebuchet::{RemoteError, distributed_actor};

#[distributed_actor]
trait Broken {
    fn not_async(&self) -> Result<(), RemoteError>;
    async fn by_value(self) -> Result<(), RemoteError>;
    async fn no_result(&self);
    async fn generic<T>(&self, value: T) -> Result<(), RemoteError>;
}

fn main() {}
