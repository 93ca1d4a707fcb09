use trebuchet::distributed_actor;

#[distributed_actor]
trait Counter {
    async fn get(&self) -> u64;
    async fn reset(&self);
    async fn maybe(&self) -> Option<u64>;
}

fn main() {}
