;; world: dns-policy
;; Hostile: check-dns grows its memory by 1 MiB at a time, writing a byte into each new MiB,
;; without end. The store's memory limit must stop it.
(module
  (memory (export "memory") 1)
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
  (func (export "check-dns")
    (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
    (local $old i32)
    (loop $more
      (local.set $old (memory.grow (i32.const 16)))
      ;; a refused grow (-1) is not the end of the attempt: touch memory and go on
      (if (i32.ge_s (local.get $old) (i32.const 0))
        (then (i32.store8 (i32.mul (local.get $old) (i32.const 65536)) (i32.const 7))))
      (br $more))
    (unreachable)))
