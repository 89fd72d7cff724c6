# SPDX-License-Identifier: MIT
# Installation, as a Debian library is installed: the header, the shared library
# (with its SOVERSION) and the static library, tapegrad.pc, and a CMake package
# (tapegradConfig.cmake with a version file) giving tapegrad::tapegrad and
# tapegrad::tapegrad_static. Included from the top-level CMakeLists.txt after
# the library targets exist.

# What a program linked with the static library needs besides it, by plain
# library name so that the installed files name no path of this machine:
# xxhash, jansson, zlib, libm and pthread (the thread pool's; part of libc
# since glibc 2.34, an empty library there).
set(TG_STATIC_DEPS xxhash jansson z)
if(MATH_LIB)
  list(APPEND TG_STATIC_DEPS m)
endif()
list(APPEND TG_STATIC_DEPS pthread)
if(TG_USE_CBLAS)
  list(APPEND TG_STATIC_DEPS openblas)
endif()
foreach(dep ${TG_STATIC_DEPS})
  target_link_libraries(tapegrad_static INTERFACE $<INSTALL_INTERFACE:${dep}>)
endforeach()

install(TARGETS tapegrad tapegrad_static EXPORT tapegradTargets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(FILES ${PROJECT_SOURCE_DIR}/include/tapegrad.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(FILES ${PROJECT_SOURCE_DIR}/LICENSE DESTINATION ${CMAKE_INSTALL_DATADIR}/doc/tapegrad)

# tapegrad.pc, relocatable: the prefix is found from where the .pc file is
set(TG_PC_LIBS_PRIVATE "")
foreach(dep ${TG_STATIC_DEPS})
  if(NOT dep MATCHES "^(xxhash|jansson|z)$") # those come through Requires.private
    string(APPEND TG_PC_LIBS_PRIVATE " -l${dep}")
  endif()
endforeach()
string(STRIP "${TG_PC_LIBS_PRIVATE}" TG_PC_LIBS_PRIVATE)
file(RELATIVE_PATH TG_PC_TO_PREFIX "${CMAKE_INSTALL_FULL_LIBDIR}/pkgconfig" "${CMAKE_INSTALL_PREFIX}")
configure_file(${PROJECT_SOURCE_DIR}/tapegrad.pc.in ${PROJECT_BINARY_DIR}/tapegrad.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/tapegrad.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

# the CMake package
include(CMakePackageConfigHelpers)
set(TG_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/tapegrad)
install(EXPORT tapegradTargets NAMESPACE tapegrad:: DESTINATION ${TG_CMAKE_DIR})
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/tapegradConfig.cmake.in
  ${PROJECT_BINARY_DIR}/tapegradConfig.cmake INSTALL_DESTINATION ${TG_CMAKE_DIR})
# 0.x: only the same minor version is compatible; from 1.0 on, the same major
if(PROJECT_VERSION_MAJOR EQUAL 0)
  set(TG_COMPAT SameMinorVersion)
else()
  set(TG_COMPAT SameMajorVersion)
endif()
write_basic_package_version_file(${PROJECT_BINARY_DIR}/tapegradConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY ${TG_COMPAT})
install(FILES ${PROJECT_BINARY_DIR}/tapegradConfig.cmake
        ${PROJECT_BINARY_DIR}/tapegradConfigVersion.cmake DESTINATION ${TG_CMAKE_DIR})
