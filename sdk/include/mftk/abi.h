/* mftk plugin handshake: pure C, no torch, so a plugin built against the
 * wrong libtorch can still be inspected and reported instead of crashing.
 *
 * defines: MFTK_PLUGIN_ABI_VERSION, MFTK_SDK_VERSION, MftkPluginInfo,
 *          MFTK_PLUGIN_ENTRY_SYMBOL
 */
#ifndef MFTK_ABI_H
#define MFTK_ABI_H

#include <stdint.h>

/* Bump MFTK_PLUGIN_ABI_VERSION whenever a virtual function list of an SDK
 * interface changes, the layout of an SDK struct changes, or this handshake
 * changes. The loader requires an exact match: the C++ ABI between core and
 * plugins is not stable, so there is no "compatible range". */
#define MFTK_PLUGIN_ABI_VERSION 5
#define MFTK_SDK_VERSION "0.1.0"

/* The one symbol every plugin exports (written by MFTK_PLUGIN in plugin.h). */
#define MFTK_PLUGIN_ENTRY_SYMBOL "mftk_plugin_info"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct MftkPluginInfo {
  uint32_t abi_version;  /* first field, never moves */
  uint32_t struct_size;  /* sizeof(MftkPluginInfo) as the plugin saw it */
  const char* name;      /* library name, e.g. "mistral" */
  const char* version;   /* the plugin's own version */
  /* "sdk=0.1.0;torch=1.13.0;compiler=gcc-12;cxx11abi=1": compared field by
   * field with the host's so a mismatch names what differs. */
  const char* build_fingerprint;
  /* Called after the checks pass, with a mftk::Registrar*. */
  void (*register_components)(void* registrar);
} MftkPluginInfo;

typedef const MftkPluginInfo* (*MftkPluginEntryFn)(void);

#ifdef __cplusplus
}
#endif

#endif /* MFTK_ABI_H */
