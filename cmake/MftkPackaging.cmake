# Docs in the install tree and the Debian package (`cpack -G DEB` in the
# build folder; scripts/check-deb.sh is its test). Included last from the top
# CMakeLists.txt, once every installed target exists.

# README's links (docs/architecture.md, sdk/docs/writing-a-plugin.md) stay
# valid inside share/doc/mftk because the folders keep their relative places.
install(FILES README.md LICENSE THIRD_PARTY_NOTICES.md DESTINATION ${CMAKE_INSTALL_DOCDIR})
install(DIRECTORY docs/ DESTINATION ${CMAKE_INSTALL_DOCDIR}/docs)
install(DIRECTORY sdk/docs/ DESTINATION ${CMAKE_INSTALL_DOCDIR}/sdk/docs)

set(CPACK_PACKAGE_NAME mftk)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_VENDOR "mftk developers")
# No address is published for the project, so none is made up here.
set(CPACK_PACKAGE_CONTACT "mftk developers")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "fine-tuning toolkit for Mistral-family models on libtorch")
# The first line of Description is CPACK_PACKAGE_DESCRIPTION_SUMMARY.
set(CPACK_DEBIAN_PACKAGE_DESCRIPTION "The mftk command trains Mistral-family models (full, LoRA and QLoRA fine-tuning)
from one TOML recipe, and exports safetensors, GGUF for llama.cpp and AWQ.
Models, adapters, quantizers, optimizers, packers and exporters are plugins
(lib/mftk/plugins); this package also holds the SDK headers and the CMake
package for building third-party plugins with find_package(mftk).")
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)  # mftk_<version>_<arch>.deb
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEBIAN_PACKAGE_SECTION science)
# Depends: dpkg-shlibdeps names the package of every library an ELF file in
# the package links (libtorch, fmt, spdlog, jemalloc, and sentencepiece through
# libmftk_spm.so, which the tokenizer opens with dlmopen). What it cannot see
# is added by hand: libtorch reaches BLAS through the libblas.so.3 alternative,
# and without OpenBLAS behind it that is the reference BLAS, ~100x slower.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "libopenblas0-openmp")
# Building plugins against the SDK (find_package(mftk)) needs the headers of
# what mftk's own headers include.
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "cmake, g++, libtorch-dev, libfmt-dev, libspdlog-dev")
include(CPack)
