;; world: dns-policy
;; Hostile: check-dns answers "allow" with a 1 MiB reason, far over the 512 bytes the world allows.
;; The host must treat the answer as bad output, not log or keep it.
(module
  (memory (export "memory") 32)
  (global $heap (mut i32) (i32.const 4096))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
                           (i32.sub (i32.const 0) (local.get 2))))
    (global.set $heap (i32.add (local.get $p) (local.get 3)))
    (local.get $p))
  (func (export "validate-settings") (param i32 i32) (result i32)
    (i32.store8 (i32.const 16) (i32.const 0))
    (i32.const 16))
  ;; dns-decision at 64: verdict (discriminant u8 at 64, payload at 68..76), reason (ptr at 76,
  ;; len at 80); the reason's bytes at 1 MiB
  (func (export "check-dns")
    (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
    (memory.fill (i32.const 1048576) (i32.const 65) (i32.const 1048576))
    (i32.store8 (i32.const 64) (i32.const 0))
    (i32.store (i32.const 76) (i32.const 1048576))
    (i32.store (i32.const 80) (i32.const 1048576))
    (i32.const 64)))
