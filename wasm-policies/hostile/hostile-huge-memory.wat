;; world: dns-policy
;; Hostile: asks for 1.25 GiB of memory before it runs at all. It must fail to load (or to be
;; instantiated), never be given the memory.
(module
  (memory (export "memory") 20000)
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 4096))
  (func (export "validate-settings") (param i32 i32) (result i32)
    (i32.store8 (i32.const 16) (i32.const 0))
    (i32.const 16))
  (func (export "check-dns")
    (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
    (unreachable)))
