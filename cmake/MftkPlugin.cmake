# mftk_add_plugin(<name> SOURCES <files...> [LIBRARIES <libs...>])
#
# Builds libmftk-<name>.so, a plugin the mftk loader finds by name. Used by
# first-party plugins in this tree and, after find_package(mftk), by
# out-of-tree plugins: the same call in both places.
function(mftk_add_plugin name)
  cmake_parse_arguments(ARG "" "" "SOURCES;LIBRARIES" ${ARGN})
  set(target mftk-${name})
  add_library(${target} MODULE ${ARG_SOURCES})
  if(TARGET mftk::sdk)
    target_link_libraries(${target} PRIVATE mftk::sdk ${ARG_LIBRARIES})
  else()
    target_link_libraries(${target} PRIVATE mftk_core ${ARG_LIBRARIES})
  endif()
  set_target_properties(${target} PROPERTIES PREFIX "lib" OUTPUT_NAME "mftk-${name}")
  if(DEFINED MFTK_PLUGIN_OUTPUT_DIR)
    # in the mftk source tree
    set_target_properties(${target} PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${MFTK_PLUGIN_OUTPUT_DIR})
    if(COMMAND mftk_use_pch)
      mftk_use_pch(${target})
    endif()
    # Installed plugins sit in <libdir>/mftk/plugins, two levels below
    # libmftk_core.so: they find it there wherever the tree is unpacked.
    set_target_properties(${target} PROPERTIES INSTALL_RPATH "$ORIGIN/../..")
    install(TARGETS ${target} LIBRARY DESTINATION ${MFTK_INSTALL_PLUGIN_DIR})
    # The first-party plugins, for the mftk_runtime target (CMakeLists.txt).
    set_property(GLOBAL APPEND PROPERTY MFTK_FIRST_PARTY_PLUGINS ${target})
  endif()
endfunction()
