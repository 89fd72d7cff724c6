# SPDX-License-Identifier: MIT
# `docs`: the API documentation built from include/tapegrad.h by Doxygen
# (Debian's doxygen package), README.md as its main page, into
# <build>/docs/html. Any Doxygen warning fails the target (WARN_AS_ERROR), and
# the test doxygen_docs builds it, so the header's comments stay well-formed.
find_package(Doxygen QUIET)
if(DOXYGEN_FOUND)
  set(DOXYGEN_PROJECT_NAME tapegrad)
  set(DOXYGEN_PROJECT_NUMBER ${PROJECT_VERSION})
  set(DOXYGEN_PROJECT_BRIEF "${PROJECT_DESCRIPTION}")
  set(DOXYGEN_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/docs)
  set(DOXYGEN_USE_MDFILE_AS_MAINPAGE ${PROJECT_SOURCE_DIR}/README.md)
  set(DOXYGEN_EXTRACT_ALL YES)
  set(DOXYGEN_OPTIMIZE_OUTPUT_FOR_C YES)
  set(DOXYGEN_MACRO_EXPANSION YES)
  set(DOXYGEN_PREDEFINED "TG_API=" "TG_PRINTF(f,a)=")
  set(DOXYGEN_WARN_AS_ERROR YES)
  set(DOXYGEN_GENERATE_LATEX NO)
  set(DOXYGEN_QUIET YES)
  doxygen_add_docs(docs ${PROJECT_SOURCE_DIR}/include/tapegrad.h ${PROJECT_SOURCE_DIR}/README.md
                   COMMENT "API documentation (Doxygen) into ${PROJECT_BINARY_DIR}/docs/html")
else()
  add_custom_target(docs COMMAND ${CMAKE_COMMAND} -E echo "docs: doxygen not found (apt-get install doxygen)"
                    COMMAND ${CMAKE_COMMAND} -E false)
endif()
