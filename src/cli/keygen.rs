//! `pgark keygen`: prints a new random 256-bit key, as a key file holds it (64 hexadecimal
//! characters and a newline), for `encryption.key_file`.

use crate::catalog::encryption::Key;
use crate::cli::exit;

/// `pgark keygen`.
pub fn keygen() -> i32 {
    let key = Key::generate();
    println!("{}", key.to_hex());
    eprintln!(
        "key id {}: store it with mode 0600 (pgark keygen > key && chmod 600 key) and keep a copy away from the backups: without it nothing encrypted with it can be read",
        key.id()
    );
    exit::OK
}
