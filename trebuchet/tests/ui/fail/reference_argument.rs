use trebuchet::{RemoteError, distributed_actor};

#[distributed_actor]
trait Greeter {
    async fn greet(&self, name: &str) -> Result<String, RemoteError>;
}

fn main() {}
