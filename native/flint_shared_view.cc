// One function flint_sys.c cannot write in C: a SharedArrayBuffer over
// memory the addon mapped. N-API only makes external ArrayBuffers, and V8
// counts each one's length as external memory of the isolate that made it:
// every view of a VM's guest RAM (64 MiB and up, on the main thread and on
// each device thread) started a full mark-compact ("external memory
// pressure") while the VM was starting. A SharedArrayBuffer over the same
// bytes is not counted that way. No deleter: the mapping is owned and
// unmapped by the caller, as for the external ArrayBuffers.
#include <node_api.h>
#include <v8.h>

#include <memory>

extern "C" napi_value flint_shared_view(void *addr, size_t len) {
  v8::Isolate *isolate = v8::Isolate::GetCurrent();
  std::unique_ptr<v8::BackingStore> store = v8::SharedArrayBuffer::NewBackingStore(addr, len, [](void *, size_t, void *) {}, nullptr);
  v8::Local<v8::Value> sab = v8::SharedArrayBuffer::New(isolate, std::move(store));
  // A napi_value is the address of a handle in the current HandleScope (Node's
  // js_native_api_v8.h, JsValueFromV8LocalValue); N-API callbacks run inside one.
  return reinterpret_cast<napi_value>(*sab);
}
