# SPDX-License-Identifier: MIT
# tapegrad_mpi: data-parallel training over MPI (include/tapegrad/mpi.h, src/mpi/),
# an optional library of its own, so that the core library never depends on MPI.
# Built when an MPI implementation (Debian: libopenmpi-dev) is found and TG_MPI
# is on (the default then). Also: examples/mpi_mlp, and the tests of tests/mpi/
# run by ctest under mpirun with 2 processes.
find_package(MPI COMPONENTS C QUIET)
option(TG_MPI "Build tapegrad_mpi, data-parallel training over MPI (needs Open MPI)" ${MPI_C_FOUND})
if(TG_MPI AND NOT MPI_C_FOUND)
  message(FATAL_ERROR "TG_MPI=ON but no MPI was found (apt-get install libopenmpi-dev openmpi-bin)")
endif()

if(NOT TG_MPI)
  message(STATUS "tapegrad_mpi: not built (TG_MPI off or no MPI: apt-get install libopenmpi-dev openmpi-bin)")
  if(TARGET mpi_mlp)
    set_target_properties(mpi_mlp PROPERTIES EXCLUDE_FROM_ALL TRUE)
  endif()
  return()
endif()

file(GLOB TG_SOURCES_mpi CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/src/mpi/*.c)
add_library(tapegrad_mpi_obj OBJECT ${TG_SOURCES_mpi})
set_target_properties(tapegrad_mpi_obj PROPERTIES POSITION_INDEPENDENT_CODE ON
                      C_VISIBILITY_PRESET hidden)
# the engine's internal header, for the context's allocator and generator state
target_include_directories(tapegrad_mpi_obj PUBLIC
  $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include> $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>
  PRIVATE ${TG_INCLUDES_engine})
# the library's own settings: no FMA contraction, so the shared-memory sum gives the
# bits of the packed allreduce with every compiler
tg_library_settings(tapegrad_mpi_obj)
target_link_libraries(tapegrad_mpi_obj PUBLIC MPI::MPI_C PkgConfig::XXHASH)

add_library(tapegrad_mpi_static STATIC $<TARGET_OBJECTS:tapegrad_mpi_obj>)
add_library(tapegrad_mpi SHARED $<TARGET_OBJECTS:tapegrad_mpi_obj>)
target_link_libraries(tapegrad_mpi_static PUBLIC tapegrad_static MPI::MPI_C PkgConfig::XXHASH)
target_link_libraries(tapegrad_mpi PUBLIC tapegrad MPI::MPI_C PRIVATE PkgConfig::XXHASH)
foreach(t tapegrad_mpi_static tapegrad_mpi)
  target_include_directories(${t} PUBLIC
    $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include> $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
endforeach()
set_target_properties(tapegrad_mpi_static PROPERTIES OUTPUT_NAME tapegrad_mpi)
set_target_properties(tapegrad_mpi PROPERTIES VERSION ${PROJECT_VERSION} SOVERSION ${PROJECT_VERSION_MAJOR})
install(TARGETS tapegrad_mpi tapegrad_mpi_static
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(FILES ${PROJECT_SOURCE_DIR}/include/tapegrad/mpi.h
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/tapegrad)

if(TARGET mpi_mlp)
  target_link_libraries(mpi_mlp PRIVATE tapegrad_mpi_static)
endif()

# ---- tests: programs under mpirun -np 2, driven by tests/mpi/mpi_test.sh ----
if(TG_BUILD_TESTS)
  tg_add_programs(${PROJECT_SOURCE_DIR}/tests/mpi/mpi_*.c tapegrad_mpi_static ${CMAKE_BINARY_DIR}/tests)
  foreach(name ${TG_PROGRAMS}) # the generated data set of examples/teacher_data.h
    target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/examples)
  endforeach()
  find_program(TG_BASH bash)
  # MPIEXEC_EXECUTABLE comes from FindMPI; empty when mpirun is absent: the
  # script then says so and the tests are reported as skipped (exit 77)
  set(TG_MPI_CASES equivalence_f64 equivalence_f32 rerun_identical bad_data_path
      fail_after_checkpoint failed_alone killed_rank)
  foreach(case ${TG_MPI_CASES})
    add_test(NAME mpi_${case}
             COMMAND ${TG_BASH} ${PROJECT_SOURCE_DIR}/tests/mpi/mpi_test.sh ${case}
                     "${MPIEXEC_EXECUTABLE}" ${CMAKE_BINARY_DIR}/tests ${CMAKE_BINARY_DIR}/mpi_test)
    set_tests_properties(mpi_${case} PROPERTIES TIMEOUT 600 SKIP_RETURN_CODE 77
                         FAIL_REGULAR_EXPRESSION "FAIL ")
  endforeach()
  if(TARGET mpi_mlp)
    add_test(NAME example_mpi_mlp
             COMMAND ${TG_BASH} ${PROJECT_SOURCE_DIR}/tests/mpi/mpi_test.sh example
                     "${MPIEXEC_EXECUTABLE}" ${CMAKE_BINARY_DIR}/examples ${CMAKE_BINARY_DIR}/mpi_test)
    set_tests_properties(example_mpi_mlp PROPERTIES TIMEOUT 600 SKIP_RETURN_CODE 77
                         FAIL_REGULAR_EXPRESSION "FAIL ")
  endif()
endif()
