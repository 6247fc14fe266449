fn main() { println!("hi {:?}", std::env::args().collect::<Vec<_>>()); }
